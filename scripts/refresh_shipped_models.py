"""Re-save the code and configs of every shipped `models/*` folder from the package, keeping weights and cards.

    python scripts/refresh_shipped_models.py           # rewrite the folders
    python scripts/refresh_shipped_models.py --check   # only report what would change (exit 1 if anything would)

Each folder is loaded with the package's classes and saved with `save_pretrained` (model, then its image processor or
feature extractor) into a scratch folder. From there the code copies (`*.py`, what `trust_remote_code=True` runs)
and the JSON configs (`config.json`, `generation_config.json`, `preprocessor_config.json`) replace the folder's.
Code files the package no longer writes are removed. The weights (`model.safetensors`), the card (`README.md`) and
every other file (results, samples) are left untouched; the script checks that the re-saved weights equal the shipped
ones tensor for tensor, so a package change that would no longer load them exactly stops here. Run it after every
change to the package's model, config or processor files (`tests/test_shipped_models.py` fails until then).

A folder is loaded with the class its `architectures` names, so a folder whose form has changed is converted: an audio
folder saved as `model_type="hf_vqvae"` with `spatial_dims=1` loads as a `VQVAEAudioModel` (`VQVAEModel.from_pretrained`
maps it) and is re-saved as `hf_vqvae_audio`, with the same weights.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file


MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAMES = ("config.json", "generation_config.json", "preprocessor_config.json")
# Written by whichever transformers saved the folder; not a property of the package's code.
VERSION_KEY = "transformers_version"


def _class_named(name: str):
    """A class of the package by name, else of transformers (the classifier is a stock `ResNetForImageClassification`)."""
    import transformers

    import hf_vqvae

    for module in (hf_vqvae, transformers):
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(
        f"`{name}` is neither an hf_vqvae nor a transformers class; cannot re-save a folder that names it."
    )


def render_folder(folder: Path, output_dir: Path) -> dict[str, bytes]:
    """What `save_pretrained` of the package writes for `folder`: {file name: bytes} of its code and config files.

    Raises `ValueError` if the re-saved weights are not the shipped ones, tensor for tensor.
    """
    config = json.loads((folder / "config.json").read_text())
    architectures = config.get("architectures") or []
    if len(architectures) != 1:
        raise ValueError(f"{folder / 'config.json'}: expected one entry in `architectures`; got {architectures!r}.")
    model = _class_named(architectures[0]).from_pretrained(folder)
    model.save_pretrained(output_dir)
    processor_file = folder / "preprocessor_config.json"
    if processor_file.exists():
        processor_config = json.loads(processor_file.read_text())
        processor_type = processor_config.get("image_processor_type") or processor_config.get("feature_extractor_type")
        if processor_type is None:
            raise ValueError(f"{processor_file}: names neither `image_processor_type` nor `feature_extractor_type`.")
        _class_named(processor_type).from_pretrained(folder).save_pretrained(output_dir)
    shipped, saved = load_file(folder / WEIGHTS_NAME), load_file(output_dir / WEIGHTS_NAME)
    if shipped.keys() != saved.keys() or any(not torch.equal(shipped[key], saved[key]) for key in shipped):
        missing, unexpected = sorted(shipped.keys() - saved.keys()), sorted(saved.keys() - shipped.keys())
        raise ValueError(
            f"{folder}: the package no longer loads the shipped weights exactly (missing {missing}, unexpected "
            f"{unexpected}, or changed values). Convert the weights deliberately instead of refreshing."
        )
    return {
        path.name: path.read_bytes()
        for path in sorted(output_dir.iterdir())
        if path.suffix == ".py" or path.name in CONFIG_NAMES
    }


def _comparable(name: str, content: bytes):
    if not name.endswith(".json"):
        return content
    data = json.loads(content)
    data.pop(VERSION_KEY, None)
    return data


def folder_changes(folder: Path, rendered: dict[str, bytes]) -> dict[str, str]:
    """{file name: "added" | "changed" | "removed"} between a folder's code and config files and `rendered`.

    JSON files compare as data, ignoring `transformers_version`: a newer transformers alone is no drift.
    """
    current = {path.name for path in folder.iterdir() if path.suffix == ".py" or path.name in CONFIG_NAMES}
    changes = {}
    for name in sorted(current | rendered.keys()):
        if name not in rendered:
            changes[name] = "removed"
        elif name not in current:
            changes[name] = "added"
        elif _comparable(name, (folder / name).read_bytes()) != _comparable(name, rendered[name]):
            changes[name] = "changed"
    return changes


def shipped_folders(models_dir: Path = MODELS_DIR) -> list[Path]:
    return sorted(path for path in models_dir.iterdir() if (path / "config.json").exists())


def _write_atomic(path: Path, content: bytes):
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def refresh_folder(folder: Path, check: bool = False) -> dict[str, str]:
    """Re-save `folder`'s code and configs (unless `check`); returns the changes."""
    with tempfile.TemporaryDirectory() as scratch:
        rendered = render_folder(folder, Path(scratch))
    changes = folder_changes(folder, rendered)
    if not check:
        for name, change in changes.items():
            if change == "removed":
                (folder / name).unlink()
            else:
                _write_atomic(folder / name, rendered[name])
    return changes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="Write nothing; list what would change and exit 1 if anything would."
    )
    parser.add_argument(
        "--models_dir", type=Path, default=MODELS_DIR, help="The folder of shipped models (default: the repo's)."
    )
    return parser.parse_args(argv)


def main(args) -> int:
    from transformers.utils import logging

    logging.disable_progress_bar()
    any_change = False
    for folder in shipped_folders(args.models_dir):
        changes = refresh_folder(folder, check=args.check)
        any_change = any_change or bool(changes)
        summary = ", ".join(f"{name} {change}" for name, change in changes.items()) or "up to date"
        print(f"{folder.name}: {summary}")
    return 1 if (args.check and any_change) else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
