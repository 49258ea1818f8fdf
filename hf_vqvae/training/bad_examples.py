"""
What every script's data path does with a row it cannot use (an undecodable or truncated image, empty or NaN audio,
a mode the processor refuses, ...): `--on_bad_example error` (the default) stops with a [`BadExampleError`] naming the
split, the row, the file where known, the column and the cause; `--on_bad_example skip` leaves the row out, logs it
once, counts it for the progress bar and lists it in `skipped_examples.jsonl`.

The pieces, in the order a data path uses them:

    add_bad_example_argument(parser)                       # --on_bad_example {error,skip}
    policy = BadExamplePolicy(args.on_bad_example)
    # per batch of rows read by index ranges (tokenization, evaluation): `positions` are the good rows of `values`
    pixel_values, positions = policy.process_rows(
        values, load_image, lambda images: processor(images)["pixel_values"], split="train", indices=range(a, b),
        column="img",
    )
    # or per row inside a `datasets` transform (in a DataLoader worker), then in the collate function (still in the
    # worker), then in the loop (main process):
    item = policy.decode(load_image, value, split="train", index=i, column="img")  # the item or a SkippedExample
    collate_fn = lambda examples: collate_good_rows(examples, collate, key="pixel_values")
    for batch in dataloader:
        batch = policy.receive(batch)  # records the skipped rows; None when the batch had no good row
    # at the end, on every process (each reports its own rows), then on the main process:
    skipped = gather_skipped(policy)  # = merge_skipped(accelerate.utils.gather_object(policy.records()))
    write_skipped(output_dir / SKIPPED_EXAMPLES_NAME, skipped)

Rows are identified by `(split, index)`, the row's index in its split, so that a row seen twice (two epochs, or by
two processes when a distributed sampler pads the last batch) is reported once.
"""

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import get_worker_info
from transformers.utils import logging


logger = logging.get_logger(__name__)

ON_BAD_EXAMPLE_CHOICES = ("error", "skip")
SKIPPED_EXAMPLES_NAME = "skipped_examples.jsonl"
# The key of a batch of `collate_good_rows` that carries the rows it left out, from the DataLoader workers.
SKIPPED_KEY = "skipped_examples"
# What a decode or process function raises for a row it cannot use. Our processors raise ValueError for every bad
# input (`load_image`, `load_audio`); OSError covers `datasets`' own decoding (PIL's UnidentifiedImageError, a missing
# file). Anything else (ImportError, RuntimeError, MemoryError, ...) is a bug or the machine, not the row.
DEFAULT_ROW_ERRORS = (ValueError, OSError)
_SKIP_HINT = f"pass `--on_bad_example skip` to leave such rows out and list them in {SKIPPED_EXAMPLES_NAME}"


@dataclass(frozen=True)
class SkippedExample:
    """
    A row left out under `--on_bad_example skip`: its split, its index in the split, the column, the file it came
    from when known (a shard, or the path of an image/audio file) and the cause (the error message).
    """

    split: str
    index: int
    cause: str
    column: str | None = None
    source: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.split, self.index)

    def to_dict(self) -> dict:
        return asdict(self)


class BadExampleError(ValueError):
    """
    A row the data path cannot use, under `--on_bad_example error`. The message names the split, the row index, the
    file (where known), the column and the cause, and says how to skip such rows; the fields are attributes too.
    `BadExampleError(message)` alone also works (PyTorch's DataLoader rebuilds worker errors from their message).
    """

    def __init__(
        self,
        cause: str,
        split: str | None = None,
        index: int | None = None,
        column: str | None = None,
        source: str | None = None,
    ):
        self.cause, self.split, self.index, self.column, self.source = cause, split, index, column, source
        if split is None and index is None:
            super().__init__(cause)
            return
        where = f"Row {index} of split {split!r}"
        if source:
            where += f" (from {source})"
        if column:
            where += f", column {column!r},"
        super().__init__(
            f"{where} cannot be used: {cause.rstrip('.')}. Fix or remove the row, or {_SKIP_HINT} (every other row is "
            "still used)."
        )

    def __reduce__(self):  # keep the fields across processes (pickling rebuilds from `args` otherwise)
        return (type(self), (self.cause, self.split, self.index, self.column, self.source))

    def to_skipped(self) -> SkippedExample:
        return SkippedExample(self.split, self.index, self.cause, self.column, self.source)


def _source_of(value: Any) -> str | None:
    """The file a `datasets` Image/Audio cell (`{"bytes", "path"}`) came from, when it names one."""
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"]:
        return value["path"]
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return None


class BadExamplePolicy:
    """
    The `--on_bad_example` policy of one process.

    Args:
        on_bad_example (`str`, *optional*, defaults to `"error"`):
            `"error"`: the first bad row raises a [`BadExampleError`] (from the original error). `"skip"`: bad rows
            are left out, each logged once and recorded once (by `(split, index)`).
        errors (`tuple[type[BaseException], ...]`, *optional*, defaults to `(ValueError, OSError)`):
            The exceptions of a decode or process function that mean "this row is bad". Others propagate unchanged.
    """

    def __init__(self, on_bad_example: str = "error", errors: tuple[type[BaseException], ...] = DEFAULT_ROW_ERRORS):
        if on_bad_example not in ON_BAD_EXAMPLE_CHOICES:
            raise ValueError(
                f"`on_bad_example` must be one of {list(ON_BAD_EXAMPLE_CHOICES)}; got {on_bad_example!r}."
            )
        self.on_bad_example = on_bad_example
        self.errors = tuple(errors)
        self._skipped: dict[tuple[str, int], SkippedExample] = {}

    @property
    def skip(self) -> bool:
        return self.on_bad_example == "skip"

    @property
    def num_skipped(self) -> int:
        """Rows this process has skipped (each counted once): the progress bar's `skipped` count."""
        return len(self._skipped)

    @property
    def skipped(self) -> list[SkippedExample]:
        """This process's skipped rows, sorted by split and index."""
        return sorted(self._skipped.values(), key=lambda row: row.key)

    def records(self) -> list[dict]:
        """This process's skipped rows as JSON-friendly dicts: what to hand to `accelerate.utils.gather_object`."""
        return [row.to_dict() for row in self.skipped]

    def record(self, row: SkippedExample, log: bool = True) -> bool:
        """
        Adds a skipped row (e.g. one a DataLoader worker reported, or one a resumed run read from its checkpoint with
        `log=False`); False if it was already recorded.
        """
        if row.key in self._skipped:
            return False
        self._skipped[row.key] = row
        if log and get_worker_info() is None:  # a worker's rows are logged once they reach the main process
            where = f" ({row.source})" if row.source else ""
            logger.warning(f"Skipping row {row.index} of split {row.split!r}{where}: {row.cause}")
        return True

    def receive(self, batch: dict) -> dict | None:
        """
        A batch of [`collate_good_rows`] in the main process: records the rows it skipped and returns it without
        them, or `None` when it has no good row (the caller skips it; in a distributed training loop every process
        must still take part in the step, e.g. with a loss of `0 * sum(p.sum() for p in params)`, or the gradient
        all-reduce waits forever).
        """
        batch = dict(batch)
        for row in batch.pop(SKIPPED_KEY, []):
            self.record(row)
        return batch or None

    def report(
        self,
        error: BaseException | str,
        *,
        split: str,
        index: int,
        column: str | None = None,
        source: str | None = None,
    ) -> SkippedExample:
        """
        A bad row: raises a [`BadExampleError`] under `"error"` (chained to `error` when it is an exception), records
        and returns it under `"skip"`.
        """
        if isinstance(error, BadExampleError) and error.split is not None:  # already named by a nested call
            split, index = error.split, error.index
            column, source, error = error.column or column, error.source or source, error.cause
        cause = error if isinstance(error, str) else str(error) or type(error).__name__
        row = SkippedExample(str(split), int(index), cause, column, None if source is None else str(source))
        if not self.skip:
            exception = BadExampleError(row.cause, row.split, row.index, row.column, row.source)
            if isinstance(error, BaseException):
                raise exception from error
            raise exception
        self.record(row)
        return row

    def decode(
        self,
        decode: Callable[[Any], Any],
        value: Any,
        *,
        split: str,
        index: int,
        column: str | None = None,
        source: str | None = None,
    ) -> Any:
        """
        `decode(value)`, or, when it raises one of `self.errors`: under `"error"` a [`BadExampleError`], under
        `"skip"` the row's [`SkippedExample`] (returned in place of the item, so that a DataLoader worker can hand
        it to [`collate_good_rows`] in the main process). `source` defaults to the path a `datasets` cell names.
        """
        try:
            return decode(value)
        except self.errors as error:
            return self.report(error, split=split, index=index, column=column, source=source or _source_of(value))

    def decode_rows(
        self,
        decode: Callable[[Any], Any],
        values: Sequence[Any],
        *,
        split: str,
        indices: Sequence[int],
        column: str | None = None,
        source: str | None = None,
    ) -> tuple[list[Any], list[int]]:
        """
        `decode` on each of `values` (the rows `indices` of `split`): the decoded items of the good rows and their
        positions in `values`.
        """
        if len(values) != len(indices):
            raise ValueError(f"Got {len(values)} values for {len(indices)} row indices; give one index per value.")
        items, positions = [], []
        for position, (value, index) in enumerate(zip(values, indices)):
            item = self.decode(decode, value, split=split, index=index, column=column, source=source)
            if not isinstance(item, SkippedExample):
                items.append(item)
                positions.append(position)
        return items, positions

    def process_rows(
        self,
        values: Sequence[Any],
        decode: Callable[[Any], Any],
        process: Callable[[list[Any]], Any],
        *,
        split: str,
        indices: Sequence[int],
        column: str | None = None,
        source: str | None = None,
    ) -> tuple[Any | None, list[int]]:
        """
        Decodes each row, then runs `process` (e.g. an image processor) once on the good rows' items, keeping the
        batch speed. If `process` fails on the batch, the rows are processed one at a time to find the bad ones,
        which are reported like undecodable rows; if each row passes alone, the batch error is raised as it is (it
        is not one row's fault, e.g. images of different sizes that cannot be stacked).

        Returns:
            `(processed, positions)`: `process(items of the good rows)` and those rows' positions in `values`, or
            `(None, [])` when every row was bad (skip the batch).
        """
        items, positions = self.decode_rows(decode, values, split=split, indices=indices, column=column, source=source)
        if not items:
            return None, []
        try:
            return process(items), positions
        except self.errors as batch_error:
            kept_items, kept = [], []
            for item, position in zip(items, positions):
                try:
                    process([item])
                except self.errors as error:
                    value_source = source or _source_of(values[position])
                    self.report(error, split=split, index=indices[position], column=column, source=value_source)
                else:
                    kept_items.append(item)
                    kept.append(position)
            if len(kept) == len(positions):
                raise batch_error
            return (process(kept_items), kept) if kept_items else (None, [])


def collate_good_rows(examples: list[dict], collate_fn: Callable[[list[dict]], dict], key: str) -> dict:
    """
    A DataLoader `collate_fn` that leaves skipped rows out: `collate_fn` of the examples whose `key` holds an item,
    not a [`SkippedExample`] (the marker [`BadExamplePolicy.decode`] returns for a skipped row), plus
    `batch[SKIPPED_KEY]`, the skipped rows, when there were any. When every example was skipped the batch is only
    `{SKIPPED_KEY: [...]}`. The collate function runs in the DataLoader workers, whose copies of the policy the main
    process never sees: so the skipped rows travel with the batch, and the loop hands each batch to
    [`BadExamplePolicy.receive`], which records them in the main process's policy.
    """
    good, skipped = [], []
    for example in examples:
        (skipped if isinstance(example[key], SkippedExample) else good).append(example)
    batch = dict(collate_fn(good)) if good else {}
    if skipped:
        batch[SKIPPED_KEY] = [example[key] for example in skipped]
    return batch


def merge_skipped(records: Iterable[dict | SkippedExample]) -> list[dict]:
    """
    The skipped rows of all processes (e.g. `accelerate.utils.gather_object(policy.records())`), each once, sorted by
    split and index. A row reported by two processes (a padded distributed sampler gives some rows to two) is kept
    once, with the first process's cause.
    """
    merged: dict[tuple[str, int], dict] = {}
    for record in records:
        row = record.to_dict() if isinstance(record, SkippedExample) else dict(record)
        merged.setdefault((row["split"], int(row["index"])), row)
    return [merged[key] for key in sorted(merged)]


def gather_skipped(policy: BadExamplePolicy, gather_object: Callable[[list], list] | None = None) -> list[dict]:
    """
    Every process's skipped rows, merged ([`merge_skipped`]). Call it on every process (it is a collective).
    `gather_object` defaults to `accelerate.utils.gather_object` (one process: the list itself; several: their
    lists concatenated, on every process).
    """
    if gather_object is None:
        from accelerate.utils import gather_object
    return merge_skipped(gather_object(policy.records()))


def check_rows_accounted(split: str, num_rows: int, used: Iterable[int], skipped: Iterable[dict]) -> None:
    """
    Raises `RuntimeError` unless every row `0 .. num_rows - 1` of `split` was used or skipped, and none both: the
    end-of-run check that no process lost or double-counted a row.
    """
    used = list(used)
    skipped_indices = [int(row["index"]) for row in skipped if row["split"] == split]
    problems = []
    if len(set(used)) != len(used):
        problems.append("some rows were used twice")
    both = set(used) & set(skipped_indices)
    if both:
        problems.append(f"rows {sorted(both)[:10]} were both used and skipped")
    seen = set(used) | set(skipped_indices)
    missing = sorted(set(range(num_rows)) - seen)
    if missing:
        problems.append(f"rows {missing[:10]} ({len(missing)} in all) were neither used nor skipped")
    extra = sorted(seen - set(range(num_rows)))
    if extra:
        problems.append(f"rows {extra[:10]} are outside the split's {num_rows} rows")
    if problems:
        raise RuntimeError(f"Split {split!r}: " + "; ".join(problems) + ".")


def write_skipped(path: str | os.PathLike, records: Iterable[dict | SkippedExample]) -> Path:
    """
    Writes the skipped rows as JSON lines (`split`, `index`, `column`, `source`, `cause`), atomically: a temporary
    file in the same folder, then `os.replace`, so a reader never sees half a file. An empty list writes an empty
    file (the run skipped nothing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = merge_skipped(records)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_skipped(path: str | os.PathLike) -> list[dict]:
    """The rows of a `skipped_examples.jsonl` ([`write_skipped`]); `[]` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def add_bad_example_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Adds `--on_bad_example {error,skip}` (default `error`) to a script's parser or argument group."""
    parser.add_argument(
        "--on_bad_example",
        choices=ON_BAD_EXAMPLE_CHOICES,
        default="error",
        help="What to do with a dataset row that cannot be used (undecodable or truncated image, empty or NaN "
        "audio, unsupported mode, ...). `error` (default): stop, naming the split, row, file, column and cause; "
        f"finished work is kept. `skip`: leave the row out, log it once, count it in the progress bar and list it "
        f"in {SKIPPED_EXAMPLES_NAME} in the output folder.",
    )


__all__ = [
    "DEFAULT_ROW_ERRORS",
    "ON_BAD_EXAMPLE_CHOICES",
    "SKIPPED_EXAMPLES_NAME",
    "SKIPPED_KEY",
    "BadExampleError",
    "BadExamplePolicy",
    "SkippedExample",
    "add_bad_example_argument",
    "check_rows_accounted",
    "collate_good_rows",
    "gather_skipped",
    "merge_skipped",
    "read_skipped",
    "write_skipped",
]
