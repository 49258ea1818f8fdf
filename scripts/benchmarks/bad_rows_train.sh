#!/usr/bin/env bash
# Issue 22: train_vqvae.py over CIFAR-10 train with 1% of rows damaged (the copy scripts/benchmarks/bad_rows.sh makes),
# the shipped model's architecture (models/vqvae-cifar10's config) trained from scratch, batch 64, one torch thread.
# From the repository root:
#     bash scripts/benchmarks/bad_rows_train.sh [RUNS_DIR] [STEPS]   (defaults ~/runs/badrows 300)
# 1. `--on_bad_example error` (the default): must stop at the first damaged row it draws, naming it (a row of the
#    corruption manifest).
# 2. `--on_bad_example skip` for STEPS steps over the first STEPS x 64 rows: exactly one epoch (drop_last never drops
#    a row), so every row is drawn once and the skipped list must equal the manifest's bad rows among them, in full.
# The summary goes to RESULTS (default results/bad_rows.json), key "train"; SUMMARY_ONLY=1 rewrites it from the runs'
# outputs without running them again.
set -euo pipefail
RUNS=${1:-$HOME/runs/badrows}
STEPS=${2:-300}
PY=${PYTHON:-python}
RESULTS=${RESULTS:-results/bad_rows.json}
NICE=${NICE:-15}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
train() {  # output [flags...]
    local out=$1; shift
    nice -n "$NICE" $PY scripts/train_vqvae.py --model_config_name_or_path models/vqvae-cifar10 \
        --train_data_files "$RUNS/cifar10-bad/train-*.parquet" --output_dir "$RUNS/$out" --train_batch_size 64 \
        --seed 0 --report_to none --logging_steps 10 "$@"
}
if [ "${SUMMARY_ONLY:-0}" != 1 ]; then
rm -rf "$RUNS/train-bad-error"
if train train-bad-error --max_train_steps "$STEPS" --checkpointing_steps 50 > "$RUNS/train-bad-error.log" 2>&1; then
    echo "the error run should have failed" >&2; exit 1
fi
rm -rf "$RUNS/train-bad"
train train-bad --max_train_steps "$STEPS" --max_train_samples $((STEPS * 64)) --checkpointing_steps 50 \
    --on_bad_example skip > "$RUNS/train-bad.log" 2>&1
fi
$PY - "$RUNS" "$STEPS" "$RESULTS" "$NICE" <<'PYEOF'
import json, os, re, sys, tempfile
from collections import Counter
from pathlib import Path

runs, steps, results, nice = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
bad = {int(i) for i in json.loads((runs / "cifar10-bad/bad_rows.json").read_text())["bad_rows"]}
rows = steps * 64
expected = sorted(i for i in bad if i < rows)
skipped = [json.loads(line) for line in (runs / "train-bad/skipped_examples.jsonl").read_text().splitlines()]
indices = [row["index"] for row in skipped]
exact = indices == expected
error_lines = [line for line in (runs / "train-bad-error.log").read_text().splitlines() if "BadExampleError:" in line]
error = error_lines[-1] if error_lines else None
named = re.search(r"Row (\d+) of split '(\w+)'", error or "")
error_row = int(named.group(1)) if named else None
card = [line for line in (runs / "train-bad/README.md").read_text().splitlines() if line.startswith("- Skipped rows")]
print(f"error run: stopped at row {error_row} (in the manifest: {error_row in bad}): {(error or 'NO ERROR LINE')[:400]}")
print(f"skip run: {steps} steps x 64 = {rows} rows (one epoch of the first {rows}); skipped {len(indices)}, "
      f"manifest's bad rows among them {len(expected)}; exactly equal: {exact}; card: {card}")
summary = {
    "command": f"bash scripts/benchmarks/bad_rows_train.sh {runs} {steps}",
    "setup": "train_vqvae.py --model_config_name_or_path models/vqvae-cifar10 (from scratch) --train_batch_size 64 "
             f"--seed 0 on the damaged copy; OMP_NUM_THREADS=1, nice -n {nice}, shared 2-core machine",
    "error_run": {"stopped": error is not None, "row": error_row, "row_in_manifest": error_row in bad,
                  "message": error},
    "skip_run": {"steps": steps, "rows_drawn": rows, "num_skipped": len(indices),
                 "num_manifest_bad_rows_drawn": len(expected), "skipped_equals_manifest": exact,
                 "causes": dict(Counter(re.sub(r" \(\d+ bytes from '[^']*'\)", "", row["cause"])[:90]
                                        for row in skipped).most_common()), "card_line": card},
}
data = json.loads(results.read_text()) if results.exists() else {}
data["train"] = summary
fd, tmp = tempfile.mkstemp(dir=results.parent, prefix=".tmp-bad_rows.")
with os.fdopen(fd, "w") as f:
    f.write(json.dumps(data, indent=2) + "\n")
os.replace(tmp, results)
print(f"wrote {results} (train)")
if not exact or error_row not in bad:
    sys.exit(1)
PYEOF
