"""The pairing of a prior with the VQ-VAE whose codes it models, which inference and training both use.

A prior folder does not hold its VQ-VAE. `scripts/train_prior.py` records which one it was trained on in
`vqvae_reference.json` ([`save_vqvae_reference`]): its name or path, revision, codebook size, grid, and the
[`codes_fingerprint`] of its encoder and codebook (what decides the codes; a decoder fine-tune keeps it). The
generation pipeline, the anomaly scorer's users and the evaluation scripts read it back ([`load_vqvae_reference`],
[`load_vqvae_for_prior`]) and check that the VQ-VAE beside a prior is the one it was trained on
([`check_vqvae_reference`]). Code caches and tokenized datasets key on the same fingerprint.

Library code: it imports no training code.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers.utils import cached_file, logging

from .image_processing_vqvae import VQVAEImageProcessor
from .modeling_vqvae import VQVAEModel


logger = logging.get_logger(__name__)

VQVAE_REFERENCE_NAME = "vqvae_reference.json"


def model_fingerprint(model: torch.nn.Module, prefixes: tuple[str, ...] | None = None) -> str:
    """
    sha256 of a model's weights and buffers (names and raw bytes, in name order), or of those whose names start with
    one of `prefixes`: a model retrained in place under the same name gets another fingerprint, so caches built with
    the old one are not reused by mistake.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if prefixes is not None and not name.startswith(prefixes):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def codes_fingerprint(vqvae: torch.nn.Module) -> str:
    """
    The [`model_fingerprint`] of what decides a VQ-VAE's codes: its encoder and quantizer. A decoder fine-tuned with
    `freeze_encoder` keeps it, so the priors, code caches and tokenized datasets made with the model stay valid.
    """
    return model_fingerprint(vqvae, prefixes=("encoder.", "quantizer."))


def save_vqvae_reference(
    save_directory: str | os.PathLike,
    vqvae_model_name_or_path: str,
    vqvae: VQVAEModel,
    revision: str | None = None,
) -> dict:
    r"""
    Record in a prior's folder which VQ-VAE its codes come from (`vqvae_reference.json`).

    Args:
        save_directory (`str` or `os.PathLike`):
            The prior's folder.
        vqvae_model_name_or_path (`str`):
            Hub id or folder of the VQ-VAE; an existing local folder is recorded relative to `save_directory`, so
            that the two folders can move together (e.g. `../vqvae-cifar10` for models side by side).
        vqvae ([`VQVAEModel`]):
            The VQ-VAE itself, for its fingerprint, codebook size and grid.
        revision (`str`, *optional*):
            Hub revision of the VQ-VAE.

    Returns:
        `dict`: what was written.
    """
    name = str(vqvae_model_name_or_path)
    if Path(name).is_dir():
        name = Path(os.path.relpath(Path(name).resolve(), Path(save_directory).resolve())).as_posix()
    reference = {
        "vqvae_model_name_or_path": name,
        "vqvae_revision": revision,
        "vqvae_codes_fingerprint": codes_fingerprint(vqvae),  # decoder fine-tunes keep it
        "codebook_size": vqvae.config.codebook_size,
        "grid_size": list(vqvae.config.code_grid_size()),
        "image_size": vqvae.config.image_size,
    }
    path = Path(save_directory) / VQVAE_REFERENCE_NAME
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(reference, indent=2) + "\n")
    os.replace(tmp, path)  # atomic
    return reference


def load_vqvae_reference(prior_name_or_path: str | os.PathLike, **kwargs) -> dict | None:
    """The `vqvae_reference.json` of a prior folder or Hub repo, or `None` if it has none. `kwargs` go to the download."""
    path = cached_file(
        str(prior_name_or_path), VQVAE_REFERENCE_NAME, _raise_exceptions_for_missing_entries=False, **kwargs
    )
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def load_vqvae_for_prior(
    prior,
    vqvae: str | os.PathLike | VQVAEModel | None = None,
    revision: str | None = None,
) -> tuple[VQVAEModel, VQVAEImageProcessor]:
    r"""
    The VQ-VAE that decodes the codes of `prior`, with its image processor, checked against the prior.

    Args:
        prior ([`VQVAEPriorForCausalLM`]):
            The prior (any model with `config.codebook_size` and `name_or_path`); when `vqvae` is not given, its VQ-VAE is read from the `vqvae_reference.json` next to it
            (`prior.name_or_path`).
        vqvae (`str`, `os.PathLike` or [`VQVAEModel`], *optional*):
            A VQ-VAE folder or Hub id, or a loaded model.
        revision (`str`, *optional*):
            Hub revision of `vqvae` when it is a name.

    Returns:
        `tuple[VQVAEModel, VQVAEImageProcessor]`: the VQ-VAE (in eval mode) and its image processor (the saved one, or
        [`VQVAEImageProcessor.from_model_config`]).

    Raises:
        `ValueError`: no VQ-VAE was given or recorded, or its codebook size differs from the prior's. A VQ-VAE with
        the right sizes but other weights than the recorded ones only gives a warning.
    """
    reference = load_vqvae_reference(prior.name_or_path) if prior.name_or_path else None
    if vqvae is None:
        if reference is None:
            raise ValueError(
                f"The prior {prior.name_or_path!r} has no {VQVAE_REFERENCE_NAME} naming its VQ-VAE; pass one: "
                "`pipeline('vqvae-generation', model=prior, vqvae='path/or/hub-id')`."
            )
        vqvae, revision = reference["vqvae_model_name_or_path"], reference.get("vqvae_revision")
        beside = Path(prior.name_or_path) / vqvae  # a local folder is recorded relative to the prior's
        if beside.is_dir():
            vqvae = str(beside)
    image_processor = None
    if isinstance(vqvae, (str, os.PathLike)):
        model = VQVAEModel.from_pretrained(vqvae, revision=revision)
        try:
            image_processor = VQVAEImageProcessor.from_pretrained(vqvae, revision=revision)
        except OSError:  # a folder with weights and config only
            image_processor = None
    elif isinstance(vqvae, VQVAEModel):
        model = vqvae
    else:
        raise TypeError(f"`vqvae` must be a VQ-VAE folder, Hub id or `VQVAEModel`; got {type(vqvae).__name__}.")
    if image_processor is None:
        image_processor = VQVAEImageProcessor.from_model_config(model.config)

    if model.config.codebook_size != prior.config.codebook_size:
        raise ValueError(
            f"The VQ-VAE has `codebook_size` {model.config.codebook_size} but the prior models "
            f"{prior.config.codebook_size} codes: they do not belong together. Pass the VQ-VAE the prior was trained "
            f"on (its {VQVAE_REFERENCE_NAME} names it)."
        )
    check_vqvae_reference(reference, model)
    return model.eval(), image_processor


def as_code_grid(codes: torch.Tensor) -> torch.Tensor:
    """
    A VQ-VAE's codes as the grid its priors model: `(batch, h, w)` as they are, `(batch, h, w, N)` (N codes per
    position, `VQVAEConfig.num_codes_per_position`) as `(batch, h, w * N)`, each position's N codes side by side
    ([`VQVAEConfig.code_grid_size`]). `VQVAEModel.decode` takes either shape back.
    """
    return codes.flatten(-2) if codes.ndim == 4 else codes


def check_vqvae_reference(reference: dict | None, vqvae: torch.nn.Module) -> bool:
    """
    Whether `vqvae` makes the codes a prior's `reference` (its `vqvae_reference.json`) was recorded with: `True` when
    the fingerprints agree or there is nothing to compare, else `False` after a warning (its samples decode to noise
    unless the codebook is the same).
    """
    if reference is None or reference.get("vqvae_codes_fingerprint") in (None, codes_fingerprint(vqvae)):
        return True
    logger.warning(
        f"The VQ-VAE's encoder or codebook differ from those the prior was trained on "
        f"({reference['vqvae_model_name_or_path']}, {VQVAE_REFERENCE_NAME}); its samples decode to noise unless "
        "the codebook is the same."
    )
    return False


__all__ = [
    "VQVAE_REFERENCE_NAME",
    "as_code_grid",
    "check_vqvae_reference",
    "codes_fingerprint",
    "load_vqvae_for_prior",
    "load_vqvae_reference",
    "model_fingerprint",
    "save_vqvae_reference",
]
