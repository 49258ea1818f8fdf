#!/usr/bin/env bash
# Issue 22, "Measured here": tokenize_dataset.py over all 50,000 rows of CIFAR-10 train with 1% of rows damaged
# (scripts/corrupt_dataset.py). Run from the repository root:
#     bash scripts/benchmarks/bad_rows.sh [RUNS_DIR]   (default ~/runs/badrows)
# `--on_bad_example error` (the default) must stop at the first damaged row, naming it (shards of 50 rows: the shards
# before it are finished); then `skip` over the same folder must reuse those shards, list exactly the manifest's bad
# rows and use every unusual (CMYK, 16-bit) row. The speed of clean against damaged data is
# scripts/benchmarks/bad_rows_cpu.sh; the training run, scripts/benchmarks/bad_rows_train.sh. The summary goes to
# RESULTS (default results/bad_rows.json), key "tokenize".
set -euo pipefail
RUNS=${1:-$HOME/runs/badrows}
PY=${PYTHON:-python}
RESULTS=${RESULTS:-results/bad_rows.json}
NICE=${NICE:-15}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"
[ -f "$RUNS/cifar10-bad/bad_rows.json" ] || $PY scripts/corrupt_dataset.py \
    --data_files "/work/shared/data/cifar10/train-*.parquet" --output_dir "$RUNS/cifar10-bad" --fraction 0.01 --seed 0
[ -f "$RUNS/cifar10-clean/bad_rows.json" ] || $PY scripts/corrupt_dataset.py \
    --data_files "/work/shared/data/cifar10/train-*.parquet" --output_dir "$RUNS/cifar10-clean" --fraction 0 \
    --unusual_fraction 0 --seed 0
tokenize() {  # output [flags...]
    local out=$1; shift
    nice -n "$NICE" $PY scripts/tokenize_dataset.py --model models/vqvae-cifar10 \
        --data_files "$RUNS/cifar10-bad/train-*.parquet" --output_dir "$RUNS/$out" --shard_size 50 "$@"
}
rm -rf "$RUNS/tok-bad-full"
if tokenize tok-bad-full > "$RUNS/tok-bad-full-error.log" 2>&1; then
    echo "the error run should have failed" >&2; exit 1
fi
num_finished=$(find "$RUNS/tok-bad-full" -name '*.parquet' | wc -l)
tokenize tok-bad-full --on_bad_example skip > "$RUNS/tok-bad-full.log" 2>&1
$PY - "$RUNS" "$RESULTS" "$num_finished" <<'PYEOF'
import json, os, re, sys, tempfile
from pathlib import Path

import pyarrow.parquet as pq

runs, results, num_finished = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
manifest = json.loads((runs / "cifar10-bad/bad_rows.json").read_text())
expected = sorted(int(i) for i in manifest["bad_rows"])
unusual = sorted(int(i) for i in manifest["unusual_rows"])
folder = runs / "tok-bad-full"
skipped = [json.loads(line)["index"] for line in (folder / "skipped_examples.jsonl").read_text().splitlines()]
stats = json.loads((folder / "tokenization_stats.json").read_text())
used = set()
for shard in sorted(folder.rglob("*.parquet")):
    table = pq.read_table(shard)
    info = json.loads(table.schema.metadata[b"hf_vqvae.shard"])  # the shard's source rows and skipped rows
    left_out = {row["index"] for row in info["skipped"]}
    used |= {i for i in range(info["start"], info["stop"]) if i not in left_out}
error_lines = [line for line in (runs / "tok-bad-full-error.log").read_text().splitlines() if "BadExampleError:" in line]
error = error_lines[-1] if error_lines else None
named = re.search(r"Row (\d+) of split '(\w+)'", error or "")
row = int(named.group(1)) if named else None
summary = {
    "command": f"bash scripts/benchmarks/bad_rows.sh {runs}",
    "data": f"CIFAR-10 train, {manifest['num_rows']} rows; scripts/corrupt_dataset.py --fraction 0.01 --seed 0: "
            f"{len(expected)} damaged rows, {len(unusual)} unusual (CMYK, 16-bit) rows that must be used",
    "error_run": {"stopped_at_row": row, "is_first_bad_row": row == expected[0], "finished_shards_kept": num_finished,
                  "message": error},
    "skip_rerun": {"num_skipped": len(skipped), "skipped_equals_manifest": skipped == expected,
                   "num_shards": stats["num_shards"], "num_shards_reused": stats["num_shards_reused"],
                   "unusual_rows_used": all(i in used for i in unusual),
                   "num_rows_used": len(used), "every_row_used_or_skipped_once": len(used) + len(skipped) == manifest["num_rows"] and not used & set(skipped)},
}
print(json.dumps(summary, indent=2))
data = json.loads(results.read_text()) if results.exists() else {}
data["tokenize"] = summary
fd, tmp = tempfile.mkstemp(dir=results.parent, prefix=".tmp-bad_rows.")
with os.fdopen(fd, "w") as f:
    f.write(json.dumps(data, indent=2) + "\n")
os.replace(tmp, results)
if skipped != expected or row != expected[0] or not all(i in used for i in unusual):
    sys.exit(1)
PYEOF
