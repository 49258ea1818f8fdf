"""Make a copy of an image parquet dataset with a known fraction of its rows damaged, reproducibly from a seed: the test
bed of `--on_bad_example` (issue 22). The damaged rows are listed in `bad_rows.json` next to the copy.

CIFAR-10 train (the Hub dataset `uoft-cs/cifar10`, as parquet shards in `$DATA/cifar10/`; try it on the repo's
`data/cifar10_sample/`) with 1% of its rows damaged, written outside the repository:

    python scripts/corrupt_dataset.py --data_files "$DATA/cifar10/train-*.parquet" \
        --output_dir ~/runs/badrows/cifar10-bad --fraction 0.01 --seed 0

The damage, in turn over the chosen rows (each makes the row unusable, with a different cause):

- `jpeg_garbage`: a JPEG start-of-image marker, then random bytes
- `png_garbage`: a PNG signature, then random bytes (the issue's report)
- `truncated`: the first 60% of the row's own file
- `empty`: zero bytes
- `html`: an HTML error page saved as the image (a failed download)
- `null`: no bytes and no path

A further `--unusual_fraction` of the rows (default 0.2%) is re-encoded in forms that are valid but unusual, and must
be used, not skipped: a CMYK JPEG and a 16-bit grayscale PNG, in turn (`unusual_rows` of `bad_rows.json`).
"""

import argparse
import glob
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


DAMAGE = ("jpeg_garbage", "png_garbage", "truncated", "empty", "html", "null")
UNUSUAL = ("cmyk_jpeg", "gray16_png")


def damage(kind: str, data: bytes, rng: np.random.Generator) -> bytes | None:
    """The bytes of a row damaged by `kind` (`None`: a null cell)."""
    noise = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    if kind == "jpeg_garbage":
        return b"\xff\xd8\xff" + noise
    if kind == "png_garbage":
        return b"\x89PNG\r\n\x1a\n" + noise
    if kind == "truncated":
        return data[: int(len(data) * 0.6)]
    if kind == "empty":
        return b""
    if kind == "html":
        return b"<html><body>429 Too Many Requests</body></html>"
    if kind == "null":
        return None
    raise ValueError(f"Unknown damage {kind!r}; expected one of {DAMAGE}.")


def unusual(kind: str, data: bytes) -> bytes:
    """The image of `data` re-encoded as a valid but unusual file."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    buffer = io.BytesIO()
    if kind == "cmyk_jpeg":
        image.convert("CMYK").save(buffer, "JPEG", quality=95)
    elif kind == "gray16_png":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # 0..65535
        Image.fromarray(gray).save(buffer, "PNG")  # mode I;16
    else:
        raise ValueError(f"Unknown re-encoding {kind!r}; expected one of {UNUSUAL}.")
    return buffer.getvalue()


def corrupt(table: pa.Table, column: str, fraction: float, unusual_fraction: float, seed: int):
    """`(table with damaged rows, {index: damage}, {index: re-encoding})`, the same for the same seed."""
    rng = np.random.default_rng(seed)
    num_rows = table.num_rows
    chosen = rng.permutation(num_rows)
    num_bad, num_unusual = round(num_rows * fraction), round(num_rows * unusual_fraction)
    bad = {int(i): DAMAGE[k % len(DAMAGE)] for k, i in enumerate(sorted(chosen[:num_bad]))}
    odd = {int(i): UNUSUAL[k % len(UNUSUAL)] for k, i in enumerate(sorted(chosen[num_bad : num_bad + num_unusual]))}
    cells = table.column(column).to_pylist()
    for index, kind in bad.items():
        data = damage(kind, cells[index]["bytes"], rng)
        cells[index] = {"bytes": data, "path": None if data is None else f"{index:05d}.jpg"}
    for index, kind in odd.items():
        cells[index] = {"bytes": unusual(kind, cells[index]["bytes"]), "path": f"{index:05d}.{kind.split('_')[1]}"}
    array = pa.array(cells, type=table.schema.field(column).type)
    return table.set_column(table.schema.get_field_index(column), column, array), bad, odd


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_files", required=True, help="Parquet files or a glob (one split, read in order).")
    parser.add_argument("--output_dir", required=True, help="Where the damaged copy and bad_rows.json go.")
    parser.add_argument("--column", default="img", help="The image column (`{bytes, path}` cells).")
    parser.add_argument("--fraction", type=float, default=0.01, help="Fraction of rows damaged.")
    parser.add_argument("--unusual_fraction", type=float, default=0.002, help="Fraction re-encoded, still valid.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = sorted(glob.glob(args.data_files))
    if not files:
        raise ValueError(f"No file matches {args.data_files!r}.")
    if not 0 <= args.fraction + args.unusual_fraction <= 1:
        raise ValueError("`--fraction` + `--unusual_fraction` must be in [0, 1].")
    table = pa.concat_tables(pq.read_table(path) for path in files)
    table, bad, odd = corrupt(table, args.column, args.fraction, args.unusual_fraction, args.seed)
    output_dir = Path(args.output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output_dir / "train-00000-of-00001.parquet")  # keeps the `datasets` features metadata
    description = {"source": files, "seed": args.seed, "num_rows": table.num_rows, "bad_rows": bad}
    description["unusual_rows"] = odd
    (output_dir / "bad_rows.json").write_text(json.dumps(description, indent=1))
    print(f"Wrote {table.num_rows} rows to {output_dir}: {len(bad)} damaged, {len(odd)} re-encoded (still valid).")


if __name__ == "__main__":
    main()
