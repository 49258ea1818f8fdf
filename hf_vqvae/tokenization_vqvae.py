"""Images <-> token ids through a VQ-VAE, with the interface of a transformers tokenizer.

Token layout (stable; other tools may produce and consume it):

- ids `[code_offset, code_offset + codebook_size)` are the codes: id = `code_offset + code`;
- then, when `add_image_delimiters`, `boi_token_id = code_offset + codebook_size` (begin of image) and
  `eoi_token_id = boi_token_id + 1` (end of image);
- then, when `use_pad_token`, `pad_token_id` = the next id;
- `vocab_size = code_offset + codebook_size + number of special tokens`: ids below `code_offset` belong to whatever
  vocabulary the image tokens are appended to (e.g. a text tokenizer), and are never produced here;
- one image is `[boi] c(0,0) c(0,1) ... c(0,w-1) c(1,0) ... c(h-1,w-1) [eoi]`: the grid in row-major order, no
  row-end tokens.
"""

import json
import os
from pathlib import Path

import torch
from transformers import BatchEncoding
from transformers.utils import logging
from transformers.utils.hub import cached_file

from .image_processing_vqvae import VQVAEImageProcessor
from .modeling_vqvae import VQVAEModel


logger = logging.get_logger(__name__)

IMAGE_TOKENIZER_CONFIG_NAME = "image_tokenizer_config.json"


class VQVAEImageTokenizer:
    r"""
    Turns images into `input_ids` (with `attention_mask`) and `input_ids` back into images, like a text tokenizer.
    It bundles a [`VQVAEModel`] (pixels <-> codes), a [`VQVAEImageProcessor`] (images <-> pixels) and the mapping
    between codes and token ids described in this module's docstring. Codes -> ids -> codes is exact; a wrong number
    of image tokens, a padding id inside an image or an id out of range raises `ValueError`, never a wrong picture.

    Args:
        codebook_size (`int`):
            Number of codes K of the VQ-VAE.
        grid_size (`tuple[int, int]`):
            `(h, w)` of the code grid of one image.
        code_offset (`int`, *optional*, defaults to 0):
            Id of code 0; set it to the size of a text vocabulary to append image tokens after it.
        add_image_delimiters (`bool`, *optional*, defaults to `True`):
            Wrap each image in begin-of-image / end-of-image tokens.
        use_pad_token (`bool`, *optional*, defaults to `True`):
            Reserve a padding id (used by [`~VQVAEImageTokenizer.pad`]).
        model ([`VQVAEModel`], *optional*):
            The VQ-VAE; needed to tokenize images and to decode ids to images, not for the id mapping alone.
        image_processor ([`VQVAEImageProcessor`], *optional*):
            Turns images into `pixel_values` and back; built from `model.config` when omitted.

    Example:

    ```python
    >>> import torch
    >>> from hf_vqvae import VQVAEImageTokenizer

    >>> tokenizer = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2), code_offset=100)
    >>> ids = tokenizer.codes_to_ids(torch.tensor([[[0, 1], [2, 15]]]))
    >>> ids.tolist(), tokenizer.vocab_size
    ([[116, 100, 101, 102, 115, 117]], 119)
    >>> tokenizer.ids_to_codes(ids).tolist()
    [[[0, 1], [2, 15]]]
    ```
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        codebook_size: int,
        grid_size: tuple[int, int],
        code_offset: int = 0,
        add_image_delimiters: bool = True,
        use_pad_token: bool = True,
        model: VQVAEModel | None = None,
        image_processor: VQVAEImageProcessor | None = None,
    ):
        grid_size = tuple(int(s) for s in grid_size)
        if codebook_size < 1 or code_offset < 0 or len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(
                "`codebook_size` and both sides of `grid_size` must be positive and `code_offset` >= 0; got "
                f"codebook_size={codebook_size}, grid_size={grid_size}, code_offset={code_offset}."
            )
        if model is not None and model.config.codebook_size != codebook_size:
            raise ValueError(
                f"`codebook_size` ({codebook_size}) differs from the model's ({model.config.codebook_size})."
            )
        self.codebook_size = int(codebook_size)
        self.grid_size = grid_size
        self.code_offset = int(code_offset)
        self.add_image_delimiters = bool(add_image_delimiters)
        self.use_pad_token = bool(use_pad_token)
        self.model = model
        if image_processor is None and model is not None:
            image_processor = VQVAEImageProcessor.from_model_config(model.config)
        self.image_processor = image_processor

        next_id = self.code_offset + self.codebook_size
        self.boi_token_id = self.eoi_token_id = self.pad_token_id = None
        if self.add_image_delimiters:
            self.boi_token_id, self.eoi_token_id = next_id, next_id + 1
            next_id += 2
        if self.use_pad_token:
            self.pad_token_id = next_id
            next_id += 1
        self.vocab_size = next_id

    @classmethod
    def from_model(cls, model: VQVAEModel, image_processor: VQVAEImageProcessor | None = None, **kwargs):
        """Build the tokenizer of `model`, with the grid of `model.config.image_size` unless `grid_size` is given."""
        kwargs.setdefault("grid_size", model.config.latent_size())
        return cls(codebook_size=model.config.codebook_size, model=model, image_processor=image_processor, **kwargs)

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image, delimiters included."""
        return self.grid_size[0] * self.grid_size[1] + (2 if self.add_image_delimiters else 0)

    @property
    def special_token_ids(self) -> dict[str, int]:
        """Names and ids of the special tokens in use."""
        names = {"boi_token_id": self.boi_token_id, "eoi_token_id": self.eoi_token_id, "pad_token_id": self.pad_token_id}
        return {name: value for name, value in names.items() if value is not None}

    # ---------------------------------------------------------------- codes <-> ids (no model needed)

    def codes_to_ids(self, codes: torch.LongTensor) -> torch.LongTensor:
        """
        Map a batch of code grids to token ids.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
                Codes in `[0, codebook_size)`, with `(h, w) == grid_size`.

        Returns:
            `torch.LongTensor` of shape `(batch_size, num_image_tokens)`.
        """
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid_size:
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"`codes` must have shape (batch, {self.grid_size[0]}, {self.grid_size[1]}); got {got}.")
        if codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"`codes` must be an integer tensor; got {codes.dtype}.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"`codes` must lie in [0, {self.codebook_size}); got values in [{int(codes.min())}, {int(codes.max())}]."
            )
        ids = codes.long().flatten(1) + self.code_offset  # (B, h*w), row-major
        if self.add_image_delimiters:
            ids = torch.cat([torch.full_like(ids[:, :1], self.boi_token_id), ids,
                             torch.full_like(ids[:, :1], self.eoi_token_id)], dim=1)
        return ids

    def ids_to_codes(
        self, input_ids: torch.LongTensor | list, attention_mask: torch.LongTensor | list | None = None
    ) -> torch.LongTensor:
        """
        Map token ids back to code grids.

        Each sequence may hold other tokens (e.g. text) around one image: with delimiters, the image is what stands
        between its first begin-of-image token and the next end-of-image token (or the end); without them the whole
        sequence is the image. Positions where `attention_mask` is 0 are dropped first, and so is padding at the left
        or right end.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)` or `(sequence_length,)`, or lists):
                Token ids.
            attention_mask (same shape as `input_ids`, *optional*):
                1 for tokens to read, 0 for padding.

        Returns:
            `torch.LongTensor` of shape `(batch_size, h, w)`.

        Raises:
            `ValueError` when an image span holds a number of tokens other than `h * w`, a padding id, a special
            token or an id that is not a code.
        """
        rows = _as_rows(input_ids, "input_ids")
        masks = _as_rows(attention_mask, "attention_mask") if attention_mask is not None else [None] * len(rows)
        if len(masks) != len(rows):
            raise ValueError(f"`attention_mask` has {len(masks)} rows but `input_ids` has {len(rows)}.")
        grids = []
        for index, (row, mask) in enumerate(zip(rows, masks)):
            if mask is not None:
                if len(mask) != len(row):
                    raise ValueError(f"Row {index}: `attention_mask` length {len(mask)} != `input_ids` length {len(row)}.")
                row = [token for token, keep in zip(row, mask) if keep]
            grids.append(self._row_to_codes(row, index))
        return torch.tensor(grids, dtype=torch.long).view(len(grids), *self.grid_size)

    def _row_to_codes(self, row: list[int], index: int) -> list[int]:
        if self.pad_token_id is not None:
            start, end = 0, len(row)
            while start < end and row[start] == self.pad_token_id:
                start += 1
            while end > start and row[end - 1] == self.pad_token_id:
                end -= 1
            row = row[start:end]
        if self.add_image_delimiters and self.boi_token_id in row:
            row = row[row.index(self.boi_token_id) + 1 :]
            if self.eoi_token_id in row:
                row = row[: row.index(self.eoi_token_id)]
        elif self.add_image_delimiters and row[:1] == [self.eoi_token_id]:
            row = row[1:]
        expected = self.grid_size[0] * self.grid_size[1]
        if len(row) != expected:
            raise ValueError(
                f"Sequence {index}: an image needs exactly {expected} code tokens ({self.grid_size[0]}x"
                f"{self.grid_size[1]} grid); found {len(row)}. Generate exactly {expected} tokens after the "
                "begin-of-image token (e.g. `max_new_tokens`/`min_new_tokens`), or crop/pad the sequence yourself."
            )
        low, high = self.code_offset, self.code_offset + self.codebook_size
        for position, token in enumerate(row):
            if not low <= token < high:
                kind = "a padding id" if token == self.pad_token_id else f"id {token}"
                raise ValueError(
                    f"Sequence {index}, image token {position}: {kind} is not a code; image tokens must lie in "
                    f"[{low}, {high}). Remove padding and text tokens from the image span."
                )
        return [token - low for token in row]

    def pad(self, sequences: list[list[int]], padding_side: str = "right") -> BatchEncoding:
        """Pad id sequences of different lengths into `input_ids` and `attention_mask` tensors."""
        if self.pad_token_id is None:
            raise ValueError("This tokenizer has no padding id; create it with `use_pad_token=True`.")
        if padding_side not in ("left", "right"):
            raise ValueError(f"`padding_side` must be 'left' or 'right'; got {padding_side!r}.")
        length = max((len(s) for s in sequences), default=0)
        input_ids, attention_mask = [], []
        for sequence in sequences:
            pad = [self.pad_token_id] * (length - len(sequence))
            ones, zeros = [1] * len(sequence), [0] * len(pad)
            input_ids.append(list(sequence) + pad if padding_side == "right" else pad + list(sequence))
            attention_mask.append(ones + zeros if padding_side == "right" else zeros + ones)
        return BatchEncoding({"input_ids": torch.tensor(input_ids, dtype=torch.long),
                              "attention_mask": torch.tensor(attention_mask, dtype=torch.long)})

    # ---------------------------------------------------------------- images <-> ids (model needed)

    def _require_model(self, what: str):
        if self.model is None or self.image_processor is None:
            raise ValueError(
                f"{what} needs the VQ-VAE: build the tokenizer with `model=` (or `from_model` / `from_pretrained`)."
            )

    @torch.no_grad()
    def __call__(self, images, return_tensors: str = "pt") -> BatchEncoding:
        """
        Tokenize images.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                Images in any form [`VQVAEImageProcessor`] accepts.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                Only `"pt"` is supported.

        Returns:
            [`~transformers.BatchEncoding`] with `input_ids` and `attention_mask`, each `(batch_size,
            num_image_tokens)`.
        """
        self._require_model("Tokenizing images")
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt'; got {return_tensors!r}.")
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        parameter = next(self.model.parameters())
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        codes = self.model.encode(pixel_values).codes
        if tuple(codes.shape[1:]) != self.grid_size:
            raise ValueError(
                f"The images give a {tuple(codes.shape[1:])} code grid but this tokenizer expects {self.grid_size}; "
                "set the image processor's size to match `grid_size` times the downsample factor."
            )
        input_ids = self.codes_to_ids(codes.cpu())
        return BatchEncoding({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})

    @torch.no_grad()
    def batch_decode(self, input_ids, attention_mask=None, output_type: str = "pil"):
        """
        Decode token ids to images.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, or a list of lists):
                Token ids, one image per row (see [`~VQVAEImageTokenizer.ids_to_codes`]).
            attention_mask (*optional*):
                As in [`~VQVAEImageTokenizer.ids_to_codes`].
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` or `"pt"`, as in [`VQVAEImageProcessor.postprocess`].
        """
        self._require_model("Decoding ids to images")
        codes = self.ids_to_codes(input_ids, attention_mask)
        codes = codes.to(next(self.model.parameters()).device)
        reconstruction = self.model.decode(codes).reconstruction.float().cpu()
        return self.image_processor.postprocess(reconstruction, output_type=output_type)

    def decode(self, input_ids, output_type: str = "pil"):
        """Decode one sequence of token ids `(sequence_length,)` to one image."""
        rows = _as_rows(input_ids, "input_ids")
        if len(rows) != 1:
            raise ValueError(f"`decode` takes one sequence; got {len(rows)}. Use `batch_decode` for a batch.")
        return self.batch_decode(rows, output_type=output_type)[0]

    # ---------------------------------------------------------------- save / load

    def to_dict(self) -> dict:
        return {
            "tokenizer_class": type(self).__name__,
            "codebook_size": self.codebook_size,
            "grid_size": list(self.grid_size),
            "code_offset": self.code_offset,
            "add_image_delimiters": self.add_image_delimiters,
            "use_pad_token": self.use_pad_token,
            **self.special_token_ids,
            "vocab_size": self.vocab_size,
        }

    def save_pretrained(self, save_directory: str | os.PathLike):
        """Write `image_tokenizer_config.json`, and the model and image processor when present, to a folder."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        if self.model is not None:
            self.model.save_pretrained(save_directory)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(save_directory)
        target = save_directory / IMAGE_TOKENIZER_CONFIG_NAME
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, target)  # atomic

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, load_model: bool = True, **kwargs):
        """
        Load a tokenizer saved with `save_pretrained` from a folder or Hub repo; `load_model=False` loads only the
        id mapping. A folder with a VQ-VAE but no `image_tokenizer_config.json` gets the default layout.
        Remaining `kwargs` (e.g. `revision`, `cache_dir`) go to the downloads.
        """
        config_file = cached_file(
            pretrained_model_name_or_path, IMAGE_TOKENIZER_CONFIG_NAME, _raise_exceptions_for_missing_entries=False,
            **kwargs
        )
        settings = {}
        if config_file is not None:
            with open(config_file) as f:
                saved = json.load(f)
            keys = ("codebook_size", "grid_size", "code_offset", "add_image_delimiters", "use_pad_token")
            settings = {key: saved[key] for key in keys if key in saved}
        elif not load_model:
            raise ValueError(f"No {IMAGE_TOKENIZER_CONFIG_NAME} in {pretrained_model_name_or_path}.")
        if not load_model:
            return cls(**settings)
        model = VQVAEModel.from_pretrained(pretrained_model_name_or_path, **kwargs).eval()
        try:
            image_processor = VQVAEImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError:
            image_processor = None
        settings.pop("codebook_size", None)
        return cls.from_model(model, image_processor=image_processor, **settings)


def _as_rows(values, name: str) -> list[list[int]]:
    """A tensor or (nested) list of ids as a list of rows of Python ints."""
    if isinstance(values, torch.Tensor):
        if values.is_floating_point():
            raise TypeError(f"`{name}` must hold integers; got {values.dtype}.")
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise ValueError(f"`{name}` must be a non-empty sequence or tensor of token ids; got {values!r:.80}.")
    if not isinstance(values[0], (list, tuple)):
        values = [values]
    rows = []
    for row in values:
        if not isinstance(row, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
            raise TypeError(f"`{name}` rows must be sequences of ints; got {row!r:.80}.")
        rows.append(list(row))
    return rows


__all__ = ["IMAGE_TOKENIZER_CONFIG_NAME", "VQVAEImageTokenizer"]
