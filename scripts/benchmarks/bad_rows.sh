#!/usr/bin/env bash
# Issue 22, "Measured here": tokenize_dataset.py on CIFAR-10 train with 1% of rows damaged (scripts/corrupt_dataset.py),
# against the same rows undamaged. Run from the repository root:
#     bash scripts/benchmarks/bad_rows.sh [RUNS_DIR]   (default ~/runs/badrows)
# Throughput runs alternate clean / damaged twice, each under `nice -n 5`; compare their ratio, not absolute speed.
# Shards of 50 rows: the first damaged row (66) falls in shard 1, so the `error` run stops after shard 0 is finished,
# and the `skip` run of round 1, over the same folder, reuses it.
set -euo pipefail
RUNS=${1:-$HOME/runs/badrows}
PY=${PYTHON:-python}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
mkdir -p "$RUNS"
[ -f "$RUNS/cifar10-bad/bad_rows.json" ] || $PY scripts/corrupt_dataset.py \
    --data_files "/work/shared/data/cifar10/train-*.parquet" --output_dir "$RUNS/cifar10-bad" --fraction 0.01 --seed 0
[ -f "$RUNS/cifar10-clean/bad_rows.json" ] || $PY scripts/corrupt_dataset.py \
    --data_files "/work/shared/data/cifar10/train-*.parquet" --output_dir "$RUNS/cifar10-clean" --fraction 0 \
    --unusual_fraction 0 --seed 0
tokenize() {  # data output [flags...]
    local data=$1 out=$2; shift 2
    nice -n 5 $PY scripts/tokenize_dataset.py --model models/vqvae-cifar10 --data_files "$RUNS/$data/train-*.parquet" \
        --output_dir "$RUNS/$out" --shard_size 50 "$@"
}
for round in 1 2; do
    rm -rf "$RUNS/tok-clean-$round" "$RUNS/tok-bad-$round"
    tokenize cifar10-clean "tok-clean-$round" --on_bad_example skip > "$RUNS/tok-clean-$round.log" 2>&1
    if [ $round = 1 ]; then
        if tokenize cifar10-bad tok-bad-1 > "$RUNS/tok-bad-1-error.log" 2>&1; then
            echo "the error run should have failed" >&2; exit 1
        fi
    fi
    tokenize cifar10-bad "tok-bad-$round" --on_bad_example skip > "$RUNS/tok-bad-$round.log" 2>&1
done
$PY - "$RUNS" <<'PYEOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
expected = sorted(int(i) for i in json.loads((runs / "cifar10-bad/bad_rows.json").read_text())["bad_rows"])
def skipped(folder):
    return [json.loads(line)["index"] for line in (runs / folder / "skipped_examples.jsonl").read_text().splitlines()]
for folder in ("tok-bad-1", "tok-bad-2"):
    print(folder, "skipped == bad_rows.json:", skipped(folder) == expected, len(skipped(folder)))
for folder in ("tok-clean-1", "tok-clean-2"):
    print(folder, "skipped:", len(skipped(folder)))
rates = {}
for folder in ("tok-clean-1", "tok-bad-1", "tok-clean-2", "tok-bad-2"):
    stats = json.loads((runs / folder / "tokenization_stats.json").read_text())
    rates[folder] = stats["images_per_second"]
    print(folder, stats["images_per_second"], "images/s", stats["encode_seconds"], "s, reused", stats["num_shards_reused"], "of", stats["num_shards"])
clean = (rates["tok-clean-1"] + rates["tok-clean-2"]) / 2
bad = (rates["tok-bad-1"] + rates["tok-bad-2"]) / 2
print(f"damaged / clean images/s: {bad / clean:.3f} (round 1 {rates['tok-bad-1'] / rates['tok-clean-1']:.3f}, round 2 {rates['tok-bad-2'] / rates['tok-clean-2']:.3f})")
error = [line for line in (runs / "tok-bad-1-error.log").read_text().splitlines() if "BadExampleError" in line]
print("error run:", error[-1][:500] if error else "no BadExampleError line")
PYEOF
