"""What only the training and evaluation scripts use, one module per topic (the library never imports it):

- `args`: the typed arguments of each script family and the argparse groups they share;
- `data`: datasets, image and audio decoding, rows to model batches, training augmentations;
- `bad_examples`: the `--on_bad_example {error,skip}` policy for rows that cannot be decoded;
- `tokenize`: the tokenization data path of `scripts/tokenize_dataset.py` (rows to token-id shards);
- `loop`: the `Accelerator`, step budget, schedule, `prepare`, optimizer step and trackers;
- `checkpointing`: atomic writes, `checkpoint-<step>` folders, resume state and the training clock;
- `metrics`: reconstruction metrics and the validation log;
- `cards`: model and dataset cards, metrics tables, image grids, the command line a card shows;
- `hub`: the one upload function, and the Hub token kept out of every output.

See `docs/ARCHITECTURE.md` for how these sit between the scripts and the models.
"""

__all__ = []
