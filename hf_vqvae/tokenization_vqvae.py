"""Images <-> token ids through a VQ-VAE, with the interface of a transformers tokenizer.

The image tokenizer's token layout (stable; other tools may produce and consume it). It is one of two layouts: the
prior's differs (see "Token layouts" in docs/ARCHITECTURE.md, where both are side by side):

- ids `[code_offset, code_offset + codebook_size)` are the codes: id = `code_offset + code`;
- then, when `add_image_delimiters`, `boi_token_id = code_offset + codebook_size` (begin of image) and
  `eoi_token_id = boi_token_id + 1` (end of image);
- then, when `use_pad_token`, `pad_token_id` = the next id;
- `vocab_size = code_offset + codebook_size + number of special tokens`: ids below `code_offset` belong to whatever
  vocabulary the image tokens are appended to (e.g. a text tokenizer), and are never produced here;
- one image is `[boi] c(0,0) c(0,1) ... c(0,w-1) c(1,0) ... c(h-1,w-1) [eoi]`: the grid in row-major order, no
  row-end tokens.

In a text model (one call, see [`~VQVAEImageTokenizer.add_to_text_model`]): the token strings are `<img_0>` ...
`<img_{K-1}>`, then `<boi>`, `<eoi>` and `<img_pad>` (those in use), appended to a transformers tokenizer as added
special tokens, so `code_offset = len(text_tokenizer)` before they are added and the ids above hold unchanged:

    image_tokenizer = VQVAEImageTokenizer.from_pretrained("path/to/vqvae")
    image_tokenizer = image_tokenizer.add_to_text_model(text_tokenizer, text_model)  # resizes the embeddings
    batch = image_tokenizer.build_mixed_inputs(text_tokenizer(captions)["input_ids"], images=images)
    loss = text_model(**batch).loss  # text, then `<boi>` codes `<eoi>`; `labels` are -100 on padding
    prompt = text_tokenizer(["a cat"], return_tensors="pt")["input_ids"]
    generated = text_model.generate(prompt, max_new_tokens=image_tokenizer.num_image_tokens,
                                    prefix_allowed_tokens_fn=image_tokenizer.prefix_allowed_tokens_fn)
    images = image_tokenizer.batch_decode(generated)

A sequence whose image does not have exactly `h * w` code tokens raises `ValueError` unless the caller opts in to
a repair with `on_wrong_length="truncate_or_pad"` (see [`~VQVAEImageTokenizer.ids_to_codes`]).

Audio clips of a 1-D VQ-VAE use the same layout as a one-row grid: `grid_size=(1, n)` for clips of `n` codes
(`n * downsample_factor` samples; shorter clips are padded with silence, longer ones cut), `<boi>` and `<eoi>` then
delimiting the clip.

A model with N = `num_codes_per_position` > 1 codes per position gives codes `(batch, h, w, N)`; the tokenizer's grid is
then `(h, w * N)` ([`VQVAEConfig.code_grid_size`]): a position's N codes are consecutive tokens, in raster order of
the positions, and `ids_to_codes` returns that `(batch, h, w * N)` grid, which `VQVAEModel.decode` takes as it is.
"""

import json
import numbers
import os
from functools import cached_property
from pathlib import Path

import torch
from transformers import AddedToken, AutoModel, BatchEncoding
from transformers.utils import logging
from transformers.utils.hub import cached_file

from .feature_extraction_vqvae import VQVAEFeatureExtractor
from .image_processing_vqvae import VQVAEImageProcessor
from .modeling_vqvae import VQVAEAudioModel, VQVAEModel


logger = logging.get_logger(__name__)

IMAGE_TOKENIZER_CONFIG_NAME = "image_tokenizer_config.json"
# What `ids_to_codes` does with an image span of the wrong length.
ON_WRONG_LENGTH = ("error", "truncate_or_pad")


class VQVAEImageTokenizer:
    r"""
    Turns images into `input_ids` (with `attention_mask`) and `input_ids` back into images, like a text tokenizer.
    It bundles a [`VQVAEModel`] (pixels <-> codes), a [`VQVAEImageProcessor`] (images <-> pixels) and the mapping
    between codes and token ids described in this module's docstring. Codes -> ids -> codes is exact; a wrong number
    of image tokens, a padding id inside an image or an id out of range raises `ValueError`, never a wrong picture
    (unless the caller opts in to a repair of the length, see [`~VQVAEImageTokenizer.ids_to_codes`]).

    To put images into a text model: [`~VQVAEImageTokenizer.add_to_text_model`] appends the image tokens to a
    transformers tokenizer and resizes the model's embeddings, [`~VQVAEImageTokenizer.build_mixed_inputs`] builds
    text-then-image training batches, and [`~VQVAEImageTokenizer.prefix_allowed_tokens_fn`] makes `generate` emit
    well-formed images.

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
            Turns images into `pixel_values` and back; built from `model.config` when omitted. For a 1-D (audio)
            model, a [`VQVAEFeatureExtractor`] instead, and `grid_size` is `(1, codes per clip)`.

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
    # Token strings in a text tokenizer's vocabulary (`add_to_text_model`).
    image_token_format = "<img_{}>"
    boi_token = "<boi>"
    eoi_token = "<eoi>"
    pad_token = "<img_pad>"

    def __init__(
        self,
        codebook_size: int,
        grid_size: tuple[int, int],
        code_offset: int = 0,
        add_image_delimiters: bool = True,
        use_pad_token: bool = True,
        model: VQVAEModel | VQVAEAudioModel | None = None,
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
        self.is_audio = isinstance(model, VQVAEAudioModel)
        if self.is_audio and grid_size[0] != 1:
            raise ValueError(
                f"A 1-D (audio) model's codes form one row: `grid_size` must be (1, codes per clip); got {grid_size}."
            )
        if image_processor is None and model is not None:
            processor_class = VQVAEFeatureExtractor if self.is_audio else VQVAEImageProcessor
            image_processor = processor_class.from_model_config(model.config)
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
    def from_model(
        cls, model: VQVAEModel | VQVAEAudioModel, image_processor: VQVAEImageProcessor | None = None, **kwargs
    ):
        """
        Build the tokenizer of `model`, with the grid of `model.config.image_size` unless `grid_size` is given (which
        a 1-D model needs: `(1, codes per clip)`).
        """
        if isinstance(model, VQVAEAudioModel) and "grid_size" not in kwargs:
            raise ValueError(
                f"For a 1-D (audio) model, give the clip length as `grid_size=(1, n)`: clips of n codes, "
                f"n * {model.config.downsample_factor} samples."
            )
        if "grid_size" not in kwargs:
            kwargs["grid_size"] = model.config.code_grid_size()
        return cls(codebook_size=model.config.codebook_size, model=model, image_processor=image_processor, **kwargs)

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image, delimiters included."""
        return self.grid_size[0] * self.grid_size[1] + (2 if self.add_image_delimiters else 0)

    @property
    def special_token_ids(self) -> dict[str, int]:
        """Names and ids of the special tokens in use."""
        names = {
            "boi_token_id": self.boi_token_id,
            "eoi_token_id": self.eoi_token_id,
            "pad_token_id": self.pad_token_id,
        }
        return {name: value for name, value in names.items() if value is not None}

    # ---------------------------------------------------------------- codes <-> ids (no model needed)

    def codes_to_ids(self, codes: torch.LongTensor) -> torch.LongTensor:
        """
        Map a batch of code grids to token ids.

        Args:
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`):
                Codes in `[0, codebook_size)`, with `(h, w) == grid_size`; `(batch_size, w)` for a one-row grid
                (audio clips); `(batch_size, h, w / N, N)` for a model with N codes per position (flattened to the
                `(h, w)` grid, a position's N codes consecutive).

        Returns:
            `torch.LongTensor` of shape `(batch_size, num_image_tokens)`.
        """
        if isinstance(codes, torch.Tensor) and codes.ndim == 2 and self.grid_size[0] == 1:
            codes = codes[:, None]  # (batch, n) clip codes -> a one-row grid
        if isinstance(codes, torch.Tensor) and codes.ndim == 4:
            codes = codes.flatten(-2)  # (batch, h, w, N): N codes per position -> the (h, w * N) grid
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
            ids = torch.cat(
                [torch.full_like(ids[:, :1], self.boi_token_id), ids, torch.full_like(ids[:, :1], self.eoi_token_id)],
                dim=1,
            )
        return ids

    def ids_to_codes(
        self,
        input_ids: torch.LongTensor | list,
        attention_mask: torch.LongTensor | list | None = None,
        on_wrong_length: str = "error",
        fill_code: int = 0,
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
            on_wrong_length (`str`, *optional*, defaults to `"error"`):
                What to do with an image that does not have exactly `h * w` code tokens, as a text model may
                generate. `"error"` raises `ValueError`. `"truncate_or_pad"` is an explicit, logged repair: the image
                is the run of code tokens that starts the image span (it stops at the first token that is not a
                code: end-of-image, padding, text, end-of-sequence), cut to its first `h * w` codes or filled up to
                `h * w` with `fill_code` (the missing positions are the last ones in row-major order).
            fill_code (`int`, *optional*, defaults to 0):
                The code in `[0, codebook_size)` that fills missing positions under `on_wrong_length="truncate_or_pad"`.

        Returns:
            `torch.LongTensor` of shape `(batch_size, h, w)`.

        Raises:
            `ValueError` when an image span holds a number of tokens other than `h * w` (unless repaired), a padding
            id, a special token or an id that is not a code.
        """
        if on_wrong_length not in ON_WRONG_LENGTH:
            raise ValueError(f"`on_wrong_length` must be one of {ON_WRONG_LENGTH}; got {on_wrong_length!r}.")
        if isinstance(fill_code, bool) or not isinstance(fill_code, int) or not 0 <= fill_code < self.codebook_size:
            raise ValueError(f"`fill_code` must be a code in [0, {self.codebook_size}); got {fill_code!r}.")
        rows = _as_rows(input_ids, "input_ids")
        masks = _as_rows(attention_mask, "attention_mask") if attention_mask is not None else [None] * len(rows)
        if len(masks) != len(rows):
            raise ValueError(f"`attention_mask` has {len(masks)} rows but `input_ids` has {len(rows)}.")
        grids = []
        for index, (row, mask) in enumerate(zip(rows, masks)):
            if mask is not None:
                if len(mask) != len(row):
                    raise ValueError(
                        f"Row {index}: `attention_mask` length {len(mask)} != `input_ids` length {len(row)}."
                    )
                row = [token for token, keep in zip(row, mask) if keep]
            grids.append(self._row_to_codes(row, index, on_wrong_length, fill_code))
        return torch.tensor(grids, dtype=torch.long).view(len(grids), *self.grid_size)

    def _row_to_codes(self, row: list[int], index: int, on_wrong_length: str, fill_code: int) -> list[int]:
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
        low, high = self.code_offset, self.code_offset + self.codebook_size
        expected = self.grid_size[0] * self.grid_size[1]
        if len(row) != expected and on_wrong_length == "truncate_or_pad":
            num_codes = next((i for i, token in enumerate(row) if not low <= token < high), len(row))
            logger.warning(
                f"Sequence {index}: the image has {num_codes} code tokens instead of {expected}; "
                + (
                    f"keeping the first {expected}"
                    if num_codes > expected
                    else f"filling the rest with code {fill_code}"
                )
                + " (`on_wrong_length='truncate_or_pad'`)."
            )
            row = row[: min(num_codes, expected)] + [low + fill_code] * (expected - min(num_codes, expected))
        if len(row) != expected:
            raise ValueError(
                f"Sequence {index}: an image needs exactly {expected} code tokens ({self.grid_size[0]}x"
                f"{self.grid_size[1]} grid); found {len(row)}. Generate exactly {expected} tokens after the "
                "begin-of-image token (e.g. `max_new_tokens` with `prefix_allowed_tokens_fn`), or repair the length "
                "explicitly with `on_wrong_length='truncate_or_pad'`."
            )
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
        if padding_side not in ("left", "right"):
            raise ValueError(f"`padding_side` must be 'left' or 'right'; got {padding_side!r}.")
        length = max((len(s) for s in sequences), default=0)
        if self.pad_token_id is None and any(len(s) != length for s in sequences):
            raise ValueError("This tokenizer has no padding id; create it with `use_pad_token=True`.")
        input_ids, attention_mask = [], []
        for sequence in sequences:
            pad = [self.pad_token_id] * (length - len(sequence))
            ones, zeros = [1] * len(sequence), [0] * len(pad)
            input_ids.append(list(sequence) + pad if padding_side == "right" else pad + list(sequence))
            attention_mask.append(ones + zeros if padding_side == "right" else zeros + ones)
        return BatchEncoding(
            {
                "input_ids": torch.tensor(input_ids, dtype=torch.long),
                "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
            }
        )

    # ---------------------------------------------------------------- images <-> ids (model needed)

    def _require_model(self, what: str):
        if self.model is None or self.image_processor is None:
            raise ValueError(
                f"{what} needs the VQ-VAE: build the tokenizer with `model=` (or `from_model` / `from_pretrained`)."
            )

    @torch.no_grad()
    def __call__(self, images, return_tensors: str = "pt", sampling_rate: int | None = None) -> BatchEncoding:
        """
        Tokenize images (or audio clips, for a 1-D model).

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                Images in any form [`VQVAEImageProcessor`] accepts; for a 1-D model, waveforms in any form
                [`VQVAEFeatureExtractor`] accepts.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                Only `"pt"` is supported.
            sampling_rate (`int`, *optional*):
                For audio: the waveforms' rate in Hz.

        Returns:
            [`~transformers.BatchEncoding`] with `input_ids` and `attention_mask`, each `(batch_size,
            num_image_tokens)`.
        """
        self._require_model("Tokenizing images")
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt'; got {return_tensors!r}.")
        if not self.is_audio:
            return self.encode_pixel_values(self.image_processor(images, return_tensors="pt")["pixel_values"])
        # Clips of exactly `grid_size[1]` codes: shorter ones padded with silence, longer ones cut.
        parameter = next(self.model.parameters())
        length = self.grid_size[1] * self.model.config.downsample_factor
        inputs = self.image_processor(
            images,
            sampling_rate=sampling_rate,
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )
        codes = self.model.get_codes(input_values=inputs["input_values"].to(parameter.device, parameter.dtype))
        return self._codes_to_encoding(codes[:, None])  # (batch, 1, n)

    @torch.no_grad()
    def encode_pixel_values(self, pixel_values: torch.FloatTensor) -> BatchEncoding:
        """
        Tokenize images that the image processor has already prepared (e.g. in a data-loading thread or worker).

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                The `pixel_values` of `image_processor(images, return_tensors="pt")`.

        Returns:
            [`~transformers.BatchEncoding`] as [`~VQVAEImageTokenizer.__call__`].
        """
        self._require_model("Tokenizing images")
        if self.is_audio:
            raise ValueError("`encode_pixel_values` is for image models; call the tokenizer on waveforms instead.")
        parameter = next(self.model.parameters())
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        return self._codes_to_encoding(self.model.get_codes(pixel_values))

    def _codes_to_encoding(self, codes: torch.LongTensor) -> BatchEncoding:
        if codes.ndim == 4:  # N codes per position: the (h, w * N) grid
            codes = codes.flatten(-2)
        if tuple(codes.shape[1:]) != self.grid_size:
            raise ValueError(
                f"The images give a {tuple(codes.shape[1:])} code grid but this tokenizer expects {self.grid_size}; "
                "set the image processor's size to match `grid_size` times the downsample factor."
            )
        input_ids = self.codes_to_ids(codes.cpu())
        return BatchEncoding({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})

    @torch.no_grad()
    def batch_decode(
        self,
        input_ids,
        attention_mask=None,
        output_type: str = "pil",
        on_wrong_length: str = "error",
        fill_code: int = 0,
    ):
        """
        Decode token ids to images.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, or a list of lists):
                Token ids, one image per row (see [`~VQVAEImageTokenizer.ids_to_codes`]).
            attention_mask (*optional*):
                As in [`~VQVAEImageTokenizer.ids_to_codes`].
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` or `"pt"`, as in [`VQVAEImageProcessor.postprocess`]. (A 1-D model gives numpy
                waveforms, as [`VQVAEFeatureExtractor.postprocess`].)
            on_wrong_length (`str`, *optional*, defaults to `"error"`):
                `"error"` or the opt-in repair `"truncate_or_pad"`, as in [`~VQVAEImageTokenizer.ids_to_codes`].
            fill_code (`int`, *optional*, defaults to 0):
                As in [`~VQVAEImageTokenizer.ids_to_codes`].
        """
        self._require_model("Decoding ids to images")
        codes = self.ids_to_codes(input_ids, attention_mask, on_wrong_length=on_wrong_length, fill_code=fill_code)
        codes = codes.to(next(self.model.parameters()).device)
        if self.is_audio:  # waveforms (numpy arrays) of the clip length
            return self.image_processor.postprocess(self.model.decode(codes[:, 0]).reconstruction)
        reconstruction = self.model.decode(codes).reconstruction.float().cpu()
        return self.image_processor.postprocess(reconstruction, output_type=output_type)

    def decode(self, input_ids, output_type: str = "pil", on_wrong_length: str = "error", fill_code: int = 0):
        """Decode one sequence of token ids `(sequence_length,)` to one image (arguments as in `batch_decode`)."""
        rows = _as_rows(input_ids, "input_ids")
        if len(rows) != 1:
            raise ValueError(f"`decode` takes one sequence; got {len(rows)}. Use `batch_decode` for a batch.")
        return self.batch_decode(rows, output_type=output_type, on_wrong_length=on_wrong_length, fill_code=fill_code)[
            0
        ]

    # ---------------------------------------------------------------- in a text model

    def token_strings(self) -> list[str]:
        """The token strings of this layout in id order: `<img_0>` ... `<img_{K-1}>`, then the special tokens in use."""
        strings = [self.image_token_format.format(code) for code in range(self.codebook_size)]
        if self.add_image_delimiters:
            strings += [self.boi_token, self.eoi_token]
        if self.use_pad_token:
            strings.append(self.pad_token)
        return strings

    def add_to_text_model(self, text_tokenizer, text_model=None) -> "VQVAEImageTokenizer":
        """
        Append this tokenizer's image tokens to a text tokenizer's vocabulary and resize a text model's embeddings,
        so that the text model reads and writes images as ids of the documented layout.

        The tokens ([`~VQVAEImageTokenizer.token_strings`]) are added as special tokens (never split, not
        normalized, dropped by `decode(..., skip_special_tokens=True)`), so `<img_k>` gets id
        `len(text_tokenizer) + k` as counted before the call. A tokenizer that already holds all of them at exactly
        the layout's ids (e.g. one extended earlier and reloaded) is used as it is; one that holds only some of
        them, or holds them elsewhere, is an error.

        Args:
            text_tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
                The text model's tokenizer; modified in place.
            text_model ([`~transformers.PreTrainedModel`], *optional*):
                The text model; its input (and output, tied or not) embeddings are resized with
                `resize_token_embeddings` to `len(text_tokenizer)` when they are smaller (never shrunk).

        Returns:
            [`VQVAEImageTokenizer`]: a tokenizer with the same layout, `code_offset` set to the id of `<img_0>` in
            `text_tokenizer`, sharing this tokenizer's VQ-VAE and image processor.

        Raises:
            `ValueError` when some image tokens are already in the vocabulary at other ids, or when the text
            vocabulary's ids are not `0 ... len(text_tokenizer) - 1` (the new ids would not follow the layout).
        """
        strings = self.token_strings()
        vocab = text_tokenizer.get_vocab()
        present = {string: vocab[string] for string in strings if string in vocab}
        if present:
            code_offset = present.get(strings[0], -1)
            layout = {string: code_offset + i for i, string in enumerate(strings)}
            if present != layout:
                wrong = next(string for string in strings if present.get(string) != layout[string])
                found = f"has id {present[wrong]}" if wrong in present else "is missing"
                raise ValueError(
                    f"The text tokenizer already holds {len(present)} of the {len(strings)} image tokens, not at the "
                    f"ids of the layout ({wrong!r} {found}; the layout needs {layout[wrong]}). Start from the "
                    "original text tokenizer, or from one extended by `add_to_text_model` with the same image "
                    "tokenizer settings."
                )
        else:
            code_offset = len(text_tokenizer)
            if vocab and max(vocab.values()) + 1 != code_offset:
                raise ValueError(
                    f"The text tokenizer's ids run up to {max(vocab.values())} but it holds {code_offset} tokens: "
                    "new tokens would not get the ids `len(text_tokenizer) + k` of the layout."
                )
            tokens = [AddedToken(string, special=True, normalized=False) for string in strings]
            text_tokenizer.add_tokens(tokens, special_tokens=True)
            ids = text_tokenizer.convert_tokens_to_ids(strings)
            if ids != list(range(code_offset, code_offset + len(strings))):
                raise ValueError(
                    f"The text tokenizer gave the image tokens ids {ids[:3]}... instead of "
                    f"{code_offset}, {code_offset + 1}, ...; it does not append added tokens in order."
                )
        image_tokenizer = type(self)(
            codebook_size=self.codebook_size,
            grid_size=self.grid_size,
            code_offset=code_offset,
            add_image_delimiters=self.add_image_delimiters,
            use_pad_token=self.use_pad_token,
            model=self.model,
            image_processor=self.image_processor,
        )
        if text_model is not None:
            num_embeddings = text_model.get_input_embeddings().weight.shape[0]
            needed = max(len(text_tokenizer), image_tokenizer.vocab_size)
            if num_embeddings < needed:
                text_model.resize_token_embeddings(needed)
        return image_tokenizer

    def build_mixed_inputs(
        self,
        text_ids: list[list[int]] | torch.LongTensor,
        images=None,
        codes: torch.LongTensor | None = None,
        padding_side: str = "right",
    ) -> BatchEncoding:
        """
        Build a text-model batch of sequences "text, then one image": `text_ids[i] + [boi] codes [eoi]`.

        Args:
            text_ids (`list[list[int]]` or `torch.LongTensor` of shape `(batch_size, text_length)`):
                Text token ids, one sequence per image, all below `code_offset` (e.g. `text_tokenizer(texts)
                ["input_ids"]` after [`~VQVAEImageTokenizer.add_to_text_model`]); special tokens such as BOS are
                whatever the text tokenizer added.
            images (*optional*):
                Images in any form [`VQVAEImageProcessor`] accepts; tokenized with the VQ-VAE.
            codes (`torch.LongTensor` of shape `(batch_size, h, w)`, *optional*):
                Code grids instead of `images` (e.g. read back from a tokenized dataset).
            padding_side (`str`, *optional*, defaults to `"right"`):
                Where sequences of different lengths are padded with `pad_token_id`.

        Returns:
            [`~transformers.BatchEncoding`] with `input_ids`, `attention_mask` and `labels` (a copy of `input_ids`
            with -100 on padding), each `(batch_size, sequence_length)`.
        """
        if (images is None) == (codes is None):
            raise ValueError("Give exactly one of `images` and `codes`.")
        image_ids = self(images)["input_ids"] if images is not None else self.codes_to_ids(codes)
        text_rows = text_ids.tolist() if isinstance(text_ids, torch.Tensor) else [list(row) for row in text_ids]
        if len(text_rows) != len(image_ids):
            raise ValueError(f"Got {len(text_rows)} text sequences for {len(image_ids)} images; give one per image.")
        for index, row in enumerate(text_rows):
            if any(not 0 <= token < self.code_offset for token in row):
                raise ValueError(
                    f"Text sequence {index} holds ids outside [0, {self.code_offset}) (`code_offset`): text ids must "
                    "come before the image tokens. Use the tokenizer returned by `add_to_text_model`."
                )
        batch = self.pad([row + ids for row, ids in zip(text_rows, image_ids.tolist())], padding_side=padding_side)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    def prefix_allowed_tokens_fn(self, batch_id: int, input_ids: torch.LongTensor) -> list[int]:
        """
        The ids allowed next, for `generate(..., prefix_allowed_tokens_fn=image_tokenizer.prefix_allowed_tokens_fn)`:
        inside an image (after a `<boi>` with no `<eoi>` yet) only codes until there are `h * w` of them, then only
        `<eoi>`; outside an image any text id (below `code_offset`) or `<boi>`, never a lone code. Generated images
        then always decode; set `max_new_tokens` to leave room for `num_image_tokens`.

        Args:
            batch_id (`int`):
                Index of the sequence in the batch (unused; part of the `generate` interface).
            input_ids (`torch.LongTensor` of shape `(sequence_length,)`):
                The sequence so far, prompt included.

        Returns:
            `list[int]`: the allowed next ids.
        """
        if not self.add_image_delimiters:
            raise ValueError(
                "`prefix_allowed_tokens_fn` needs the begin/end-of-image tokens (`add_image_delimiters`)."
            )
        ids = input_ids.tolist()
        boi = len(ids) - 1 - ids[::-1].index(self.boi_token_id) if self.boi_token_id in ids else None
        if boi is None or self.eoi_token_id in ids[boi:]:
            return self._text_and_boi_ids
        if len(ids) - boi - 1 < self.grid_size[0] * self.grid_size[1]:
            return self._code_ids
        return [self.eoi_token_id]

    @cached_property
    def _code_ids(self) -> list[int]:
        return list(range(self.code_offset, self.code_offset + self.codebook_size))

    @cached_property
    def _text_and_boi_ids(self) -> list[int]:
        return list(range(self.code_offset)) + [self.boi_token_id]

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
            pretrained_model_name_or_path,
            IMAGE_TOKENIZER_CONFIG_NAME,
            _raise_exceptions_for_missing_entries=False,
            **kwargs,
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
        model = AutoModel.from_pretrained(pretrained_model_name_or_path, **kwargs).eval()
        if not isinstance(model, (VQVAEModel, VQVAEAudioModel)):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} holds a `{type(model).__name__}`, not a VQ-VAE "
                "(`VQVAEModel` or `VQVAEAudioModel`): the tokenizer needs the VQ-VAE's folder."
            )
        processor_class = VQVAEFeatureExtractor if isinstance(model, VQVAEAudioModel) else VQVAEImageProcessor
        try:
            image_processor = processor_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError:
            image_processor = None
        settings.pop("codebook_size", None)
        return cls.from_model(model, image_processor=image_processor, **settings)


def _as_rows(values, name: str) -> list[list[int]]:
    """A tensor, numpy array, `datasets` column or (nested) list of ids as a list of rows of Python ints."""
    if isinstance(values, torch.Tensor) or (hasattr(values, "dtype") and hasattr(values, "tolist")):
        if values.is_floating_point() if isinstance(values, torch.Tensor) else values.dtype.kind not in "iu":
            raise TypeError(f"`{name}` must hold integers; got {values.dtype}.")
        values = values.tolist()
    elif not isinstance(values, (list, tuple, str, bytes, dict)) and hasattr(values, "__iter__"):
        values = list(values)  # e.g. a `datasets` column
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise ValueError(f"`{name}` must be a non-empty sequence or tensor of token ids; got {values!r:.80}.")
    if not isinstance(values[0], (list, tuple)) and not hasattr(values[0], "tolist"):
        values = [values]
    rows = []
    for row in values:
        row = row.tolist() if hasattr(row, "tolist") else row
        if not isinstance(row, (list, tuple)) or not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in row
        ):
            raise TypeError(f"`{name}` rows must be sequences of ints; got {row!r:.80}.")
        rows.append([int(t) for t in row])
    return rows


__all__ = ["IMAGE_TOKENIZER_CONFIG_NAME", "VQVAEImageTokenizer"]
