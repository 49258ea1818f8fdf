"""Model and dataset cards: templates filled from a run's values, evaluation sections added to a card, metrics
tables, image grids, and the command line a card shows (with every Hub token redacted).
"""

import os
import re
import shlex
import sys
from pathlib import Path

from PIL import Image

from .checkpointing import atomic_write_text
from .hub import find_secrets, redact


def fill_model_card(template: str, values: dict) -> str:
    """Replace each `{{name}}` of `template` with `values[name]`; a placeholder without a value is an error."""
    missing = sorted(set(re.findall(r"\{\{(\w+)\}\}", template)) - set(values))
    if missing:
        raise ValueError(f"The model card template needs values for {missing}.")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), template)


def write_model_card(output_dir: str | os.PathLike, template_path: str | os.PathLike, values: dict):
    """Write `output_dir/README.md` (atomically): the card template at `template_path` filled with `values`."""
    atomic_write_text(Path(output_dir) / "README.md", fill_model_card(Path(template_path).read_text(), values))


def launch_command(accelerator, script: str, command_line: str) -> str:
    """The `accelerate launch` command of a training run as it ran, Accelerate's settings included (for the card)."""
    return (
        f"accelerate launch --num_processes {accelerator.num_processes} --mixed_precision "
        f"{accelerator.mixed_precision} {script} {command_line}"
    )


def update_model_card(model_dir: str | os.PathLike, title: str, command: str, body: str):
    """
    Put `body` (e.g. a metrics table) and the `command` that measured it into `model_dir/README.md`, between markers
    for `title`: a rerun replaces its own section and leaves the others.
    """
    card_file = Path(model_dir) / "README.md"
    if not card_file.exists():
        raise ValueError(
            f"`--model_card_section` needs a local model folder with a README.md; {card_file} is missing."
        )
    begin, end = f"<!-- evaluation: {title} -->", f"<!-- end evaluation: {title} -->"
    section = f"{begin}\n### {title}\n\n`{command}`\n\n{body}\n{end}"
    card = card_file.read_text()
    if begin in card and end in card:
        card = card[: card.index(begin)] + section + card[card.index(end) + len(end) :]
    else:
        anchor = "\n## Citation"
        card = card.replace(anchor, f"\n{section}\n{anchor}", 1) if anchor in card else f"{card}\n{section}\n"
    atomic_write_text(card_file, card)


def format_metrics_table(metrics: dict) -> str:
    """A Markdown table of `name | value` rows."""
    lines = ["| metric | value |", "| --- | --- |"]
    for name, value in metrics.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)


def make_image_grid(rows: list[list[Image.Image]], padding: int = 2) -> Image.Image:
    """Paste rows of equally sized PIL images into one grid image."""
    if not rows or not rows[0]:
        raise ValueError("`rows` must hold at least one image.")
    width, height = rows[0][0].size
    num_cols = max(len(row) for row in rows)
    grid = Image.new(
        "RGB", (num_cols * (width + padding) + padding, len(rows) * (height + padding) + padding), "white"
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (padding + c * (width + padding), padding + r * (height + padding)))
    return grid


def reconstruction_grid(image_processor, pixel_values, reconstruction, per_row: int = 8) -> Image.Image:
    """Originals and reconstructions in alternating rows of `per_row` images."""
    originals = image_processor.postprocess(pixel_values.float().cpu(), output_type="pil")
    outputs = image_processor.postprocess(reconstruction.float().cpu().clamp(-1, 1), output_type="pil")
    rows = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start : start + per_row], outputs[start : start + per_row]]
    return make_image_grid(rows)


def command_line(argv: list[str] | None = None) -> str:
    """
    The script's arguments (`argv`, default `sys.argv[1:]`) as one shell-quoted string, for a card or a results file:
    every Hub token in them, in any form (see [`~hf_vqvae.training.hub.find_secrets`]), is shown as `***`.
    """
    given = sys.argv[1:] if argv is None else list(argv)
    return redact(shlex.join(given), find_secrets(given))


__all__ = [
    "command_line",
    "fill_model_card",
    "format_metrics_table",
    "launch_command",
    "make_image_grid",
    "reconstruction_grid",
    "update_model_card",
    "write_model_card",
]
