#!/usr/bin/env bash
# Issue 22, "Measured here": tokenize_dataset.py on CIFAR-10 train with 1% of rows damaged (scripts/corrupt_dataset.py),
# against the same rows undamaged. Run from the repository root:
#     bash scripts/benchmarks/bad_rows.sh [RUNS_DIR]   (default ~/runs/badrows)
# First the whole 50,000 rows: `--on_bad_example error` stops at the first damaged row (66, in shard 1 of 50-row
# shards, so shard 0 is finished), then `skip` over the same folder reuses shard 0 and lists every damaged row.
# Then throughput on the first SAMPLES rows (default 10,000; the machine is shared and slow), alternating clean and
# damaged twice, each under `nice -n 5`: compare their ratio, not absolute speed.
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
SAMPLES=${2:-10000}
rm -rf "$RUNS/tok-bad-full"
if tokenize cifar10-bad tok-bad-full > "$RUNS/tok-bad-full-error.log" 2>&1; then
    echo "the error run should have failed" >&2; exit 1
fi
tokenize cifar10-bad tok-bad-full --on_bad_example skip > "$RUNS/tok-bad-full.log" 2>&1
for round in 1 2; do
    rm -rf "$RUNS/tok-clean-$round" "$RUNS/tok-bad-$round"
    tokenize cifar10-clean "tok-clean-$round" --max_samples "$SAMPLES" --on_bad_example skip \
        > "$RUNS/tok-clean-$round.log" 2>&1
    tokenize cifar10-bad "tok-bad-$round" --max_samples "$SAMPLES" --on_bad_example skip > "$RUNS/tok-bad-$round.log" 2>&1
done
$PY - "$RUNS" <<'PYEOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
expected = sorted(int(i) for i in json.loads((runs / "cifar10-bad/bad_rows.json").read_text())["bad_rows"])
samples = json.loads((runs / "tok-bad-1/tokenization_stats.json").read_text())["num_images"]
def skipped(folder):
    return [json.loads(line)["index"] for line in (runs / folder / "skipped_examples.jsonl").read_text().splitlines()]
print("tok-bad-full skipped == bad_rows.json:", skipped("tok-bad-full") == expected, len(skipped("tok-bad-full")))
full = json.loads((runs / "tok-bad-full/tokenization_stats.json").read_text())
print("tok-bad-full (after the error run): shards reused", full["num_shards_reused"], "of", full["num_shards"],
      "; images/s", full["images_per_second"])
for folder in ("tok-bad-1", "tok-bad-2"):
    print(folder, "skipped == bad_rows.json below", samples, ":", skipped(folder) == [i for i in expected if i < samples])
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
error = [line for line in (runs / "tok-bad-full-error.log").read_text().splitlines() if "BadExampleError" in line]
print("error run:", error[-1][:500] if error else "no BadExampleError line")
PYEOF
