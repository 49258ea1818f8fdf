#!/usr/bin/env bash
# Issue 22: the CPU time (user + sys) of tokenize_dataset.py over the first SAMPLES rows, clean vs 1% damaged (the
# copies scripts/benchmarks/bad_rows.sh makes), one torch thread, alternating twice. On a shared machine the CPU time
# a run needs moves far less than its wall-clock images/s. From the repository root:
#     bash scripts/benchmarks/bad_rows_cpu.sh [RUNS_DIR] [SAMPLES]
set -euo pipefail
RUNS=${1:-$HOME/runs/badrows}
SAMPLES=${2:-10000}
PY=${PYTHON:-python}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
TIMEFORMAT="%U %S %R"
for round in 1 2; do
    for data in clean bad; do
        rm -rf "$RUNS/cpu-$data-$round"
        { time nice -n 5 $PY scripts/tokenize_dataset.py --model models/vqvae-cifar10 \
            --data_files "$RUNS/cifar10-$data/train-*.parquet" --output_dir "$RUNS/cpu-$data-$round" --shard_size 50 \
            --max_samples "$SAMPLES" --on_bad_example skip > "$RUNS/cpu-$data-$round.log" 2>&1 ; } 2> "$RUNS/cpu-$data-$round.time"
        read -r user sys real < "$RUNS/cpu-$data-$round.time"
        skipped=$(wc -l < "$RUNS/cpu-$data-$round/skipped_examples.jsonl")
        echo "round $round $data: user+sys $(echo "$user + $sys" | bc) s, wall $real s, skipped $skipped"
    done
done
