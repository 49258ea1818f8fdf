#!/usr/bin/env bash
# Issue 22: one train_vqvae.py run over CIFAR-10 train with 1% of rows damaged (the copy scripts/benchmarks/bad_rows.sh
# makes), `--on_bad_example skip`. From the repository root: bash scripts/benchmarks/bad_rows_train.sh [RUNS_DIR] [STEPS]
set -euo pipefail
RUNS=${1:-$HOME/runs/badrows}
STEPS=${2:-300}
PY=${PYTHON:-python}
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
rm -rf "$RUNS/train-bad"
nice -n 5 $PY scripts/train_vqvae.py --train_data_files "$RUNS/cifar10-bad/train-*.parquet" --output_dir "$RUNS/train-bad" \
    --max_train_steps "$STEPS" --train_batch_size 64 --checkpointing_steps 50 --validation_steps 100000 --seed 0 \
    --on_bad_example skip > "$RUNS/train-bad.log" 2>&1
$PY - "$RUNS" "$STEPS" <<'PYEOF'
import json, sys
from pathlib import Path
runs, steps = Path(sys.argv[1]), int(sys.argv[2])
bad = {int(i) for i in json.loads((runs / "cifar10-bad/bad_rows.json").read_text())["bad_rows"]}
skipped = [json.loads(line)["index"] for line in (runs / "train-bad/skipped_examples.jsonl").read_text().splitlines()]
print(f"train-bad: {steps} steps of 64 rows ({steps * 64} rows drawn); skipped {len(skipped)} rows, all damaged:",
      set(skipped) <= bad, "; each once:", len(set(skipped)) == len(skipped))
card = (runs / "train-bad/README.md").read_text()
print([line for line in card.splitlines() if line.startswith("- Skipped rows")])
PYEOF
