#!/usr/bin/env bash
# Issue 22, "Measured here": tokenize_dataset.py and train_vqvae.py on CIFAR-10 train with 1% of rows damaged
# (scripts/corrupt_dataset.py), against the same rows undamaged. Run from the repository root:
#     bash scripts/benchmarks/bad_rows.sh [RUNS_DIR]   (default ~/runs/badrows)
# Throughput runs alternate clean / damaged twice, each under `nice -n 5`; compare their ratio, not absolute speed.
set -euo pipefail
RUNS=${1:-$HOME/runs/badrows}
PY=${PYTHON:-python}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
mkdir -p "$RUNS"
[ -f "$RUNS/cifar10-bad/bad_rows.json" ] || $PY scripts/corrupt_dataset.py --data_files "/work/shared/data/cifar10/train-*.parquet" \
    --output_dir "$RUNS/cifar10-bad" --fraction 0.01 --seed 0
[ -f "$RUNS/cifar10-clean/bad_rows.json" ] || $PY scripts/corrupt_dataset.py --data_files "/work/shared/data/cifar10/train-*.parquet" \
    --output_dir "$RUNS/cifar10-clean" --fraction 0 --unusual_fraction 0 --seed 0
tokenize() {  # data output [flags...]
    local data=$1 out=$2; shift 2
    nice -n 5 $PY scripts/tokenize_dataset.py --model models/vqvae-cifar10 --data_files "$RUNS/$data/train-*.parquet" \
        --output_dir "$RUNS/$out" "$@"
}
for round in 1 2; do
    rm -rf "$RUNS/tok-clean-$round" "$RUNS/tok-bad-$round"
    tokenize cifar10-clean "tok-clean-$round" --on_bad_example skip > "$RUNS/tok-clean-$round.log" 2>&1
    tokenize cifar10-bad "tok-bad-$round" --on_bad_example skip > "$RUNS/tok-bad-$round.log" 2>&1
done
# `error` stops at the first bad row (66: shards 0 and 1 of 33 rows are finished by then); `skip` then reuses them.
rm -rf "$RUNS/tok-resume"
if tokenize cifar10-bad tok-resume --shard_size 33 > "$RUNS/tok-resume-error.log" 2>&1; then
    echo "the error run should have failed" >&2; exit 1
fi
tokenize cifar10-bad tok-resume --shard_size 33 --on_bad_example skip > "$RUNS/tok-resume-skip.log" 2>&1
# A training run over the damaged data.
rm -rf "$RUNS/train-bad"
nice -n 5 $PY scripts/train_vqvae.py --train_data_files "$RUNS/cifar10-bad/train-*.parquet" --output_dir "$RUNS/train-bad" \
    --max_train_steps 300 --train_batch_size 64 --checkpointing_steps 100 --validation_steps 1000 --seed 0 \
    --on_bad_example skip > "$RUNS/train-bad.log" 2>&1
$PY - "$RUNS" <<'PYEOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
expected = sorted(int(i) for i in json.loads((runs / "cifar10-bad/bad_rows.json").read_text())["bad_rows"])
def skipped(folder):
    return [json.loads(line)["index"] for line in (runs / folder / "skipped_examples.jsonl").read_text().splitlines()]
for folder in ("tok-bad-1", "tok-bad-2", "tok-resume"):
    print(folder, "skipped == bad_rows.json:", skipped(folder) == expected, len(skipped(folder)))
for folder in ("tok-clean-1", "tok-clean-2"):
    print(folder, "skipped:", len(skipped(folder)))
rates = {}
for folder in ("tok-clean-1", "tok-bad-1", "tok-clean-2", "tok-bad-2"):
    stats = json.loads((runs / folder / "tokenization_stats.json").read_text())
    rates[folder] = stats["images_per_second"]
    print(folder, stats["images_per_second"], "images/s", stats["encode_seconds"], "s")
clean = (rates["tok-clean-1"] + rates["tok-clean-2"]) / 2
bad = (rates["tok-bad-1"] + rates["tok-bad-2"]) / 2
print(f"damaged / clean images/s: {bad / clean:.3f}")
resume = json.loads((runs / "tok-resume/tokenization_stats.json").read_text())
print("resume: shards reused", resume["num_shards_reused"], "of", resume["num_shards"])
train = skipped("train-bad")
print("train-bad skipped", len(train), "all in bad_rows.json:", set(train) <= set(expected))
PYEOF
