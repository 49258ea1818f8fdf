"""transformers pipelines for VQ-VAEs and their priors, registered by `import hf_vqvae`.

- `"vqvae-reconstruction"` ([`VQVAEReconstructionPipeline`]): image -> codes -> image with a [`VQVAEModel`].
- `"vqvae-generation"` ([`VQVAEGenerationPipeline`]): samples of a prior ([`VQVAEPriorForCausalLM`] or the gated
  PixelCNN [`VQVAEPixelCNNPriorModel`]) decoded by its VQ-VAE.
- `"vqvae-anomaly"` ([`VQVAEAnomalyPipeline`]): anomaly scores and heat maps from a [`VQVAEModel`] and, optionally, a
  prior (see `hf_vqvae.anomaly`).

A prior folder does not hold its VQ-VAE: `scripts/train_prior.py` records which one it was trained on in
`vqvae_reference.json` (see `hf_vqvae.pairing`), and the generation pipeline loads it from there unless it is given
`vqvae=`.

```python
>>> import hf_vqvae  # registers the tasks
>>> from transformers import pipeline

>>> reconstruct = pipeline("vqvae-reconstruction", model="outputs/vqvae-cifar10")
>>> reconstruct("cat.png", return_codes=True)  # {"image": PIL.Image.Image, "codes": LongTensor (h, w)}
>>> generate = pipeline("vqvae-generation", model="outputs/prior-cifar10")
>>> generate(["cat", "dog"], num_images=4, guidance_scale=2.0, seed=0)  # 8 dicts: image, class_label, label
>>> detect = pipeline("vqvae-anomaly", model="outputs/vqvae-cifar10", prior="outputs/prior-cifar10")
>>> detect("cat.png", heatmap="prior_nll")  # {"reconstruction_error": float, "prior_nll": float, ..., "heatmap": PIL}
```
"""

import os
from typing import Any

import torch
from transformers import AutoConfig, Pipeline
from transformers.image_utils import load_image
from transformers.utils import logging

from .anomaly import SCORE_NAMES, VQVAEAnomalyScorer, _unknown_keywords_message, render_anomaly_heatmap
from .image_processing_vqvae import VQVAEImageProcessor
from .modeling_pixelcnn_prior import VQVAEPixelCNNPriorModel
from .modeling_vqvae import VQVAEModel
from .modeling_vqvae_prior import VQVAEPriorForCausalLM
from .pairing import load_vqvae_for_prior


logger = logging.get_logger(__name__)

# The per-image scores the anomaly pipeline returns, and the maps it can draw (`<name>_map` of the scorer's output).
PIPELINE_SCORES = (
    *SCORE_NAMES,
    "combined_score",
    "nll_bits",
    "compression_bits",
    "complexity_corrected_nll",
    "likelihood_ratio",
    "restoration_nll",
    "restoration_error",
    "latent_knn",
)
HEATMAP_NAMES = (*SCORE_NAMES, "likelihood_ratio", "restoration", "latent_knn")
# The priors over codes: both take `generate_codes(...)` and `code_log_likelihood(codes, class_labels)`.
PRIOR_MODEL_CLASSES = (VQVAEPriorForCausalLM, VQVAEPixelCNNPriorModel)
_OUTPUT_TYPES = ("pil", "np", "pt")


def load_prior(
    prior_name_or_path: str | os.PathLike, revision: str | None = None
) -> VQVAEPriorForCausalLM | VQVAEPixelCNNPriorModel:
    """Either prior from its folder or Hub id, by the `model_type` of its config."""
    config = AutoConfig.from_pretrained(prior_name_or_path, revision=revision)
    for model_class in PRIOR_MODEL_CLASSES:
        if isinstance(config, model_class.config_class):
            return model_class.from_pretrained(prior_name_or_path, revision=revision)
    raise ValueError(
        f"{str(prior_name_or_path)!r} is a {type(config).__name__} (`model_type` {config.model_type!r}), not a prior "
        f"over codes ({', '.join(c.__name__ for c in PRIOR_MODEL_CLASSES)})."
    )


def _preprocess_one_image(image_processor, image, timeout: float | None = None):
    """`pixel_values` (1, C, H, W) of one image given as a path, URL or image."""
    if isinstance(image, str):
        image = load_image(image, timeout=timeout)
    inputs = image_processor(image, return_tensors="pt")
    if inputs["pixel_values"].shape[0] != 1:
        raise ValueError(
            f"Each input must be one image; got a batch of {inputs['pixel_values'].shape[0]}. Pass a list of "
            "images instead."
        )
    return inputs


def _check_output_type(output_type):
    if output_type not in _OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {list(_OUTPUT_TYPES)}; got {output_type!r}.")


# ---------------------------------------------------------------------------------------------------------- pipelines


class VQVAEReconstructionPipeline(Pipeline):
    r"""
    Reconstructs images with a [`VQVAEModel`]: preprocess (the model's [`VQVAEImageProcessor`]), encode to a grid of
    codes, decode, postprocess. Task `"vqvae-reconstruction"`.

    A folder without `preprocessor_config.json` gets [`VQVAEImageProcessor.from_model_config`]. Lists of images are
    batched with `batch_size`.

    Example:

    ```python
    >>> import hf_vqvae
    >>> from transformers import pipeline

    >>> reconstruct = pipeline("vqvae-reconstruction", model="outputs/vqvae-cifar10")
    >>> out = reconstruct("cat.png", return_codes=True)
    >>> out["image"].size, out["codes"].shape
    ((32, 32), torch.Size([8, 8]))
    >>> outs = reconstruct([image_1, image_2], batch_size=2)  # a list of dicts
    ```
    """

    _load_processor = False
    _load_image_processor = None  # optional: `from_model_config` when the folder has no preprocessor_config.json
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, VQVAEModel):
            raise TypeError(
                f"'vqvae-reconstruction' needs a `VQVAEModel`; got {type(self.model).__name__}. For a prior use "
                "'vqvae-generation'."
            )
        if self.image_processor is None:
            self.image_processor = VQVAEImageProcessor.from_model_config(self.model.config)
        self.model.eval()

    def __call__(self, images, **kwargs) -> dict[str, Any] | list[dict[str, Any]]:
        r"""
        Reconstruct one image or a list of images.

        Args:
            images (`str`, `PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                An image (a path or URL is loaded), or a list of images.
            return_codes (`bool`, *optional*, defaults to `False`):
                Also return each image's codes.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` (uint8 `(H, W, C)`) or `"pt"` (float `(C, H, W)` in [0, 1]).
            timeout (`float`, *optional*):
                Seconds to wait for an image URL.
            batch_size (`int`, *optional*, defaults to 1):
                Images per forward pass, for a list of images.

        Returns:
            A `dict` per image (a list of them for a list): `image` (the reconstruction, of `output_type`) and, with
            `return_codes=True`, `codes` (`torch.LongTensor` of shape `(h, w)`).
        """
        return super().__call__(images, **kwargs)

    def _sanitize_parameters(self, return_codes=None, output_type=None, timeout=None):
        preprocess_params, postprocess_params = {}, {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if return_codes is not None:
            postprocess_params["return_codes"] = bool(return_codes)
        if output_type is not None:
            _check_output_type(output_type)
            postprocess_params["output_type"] = output_type
        return preprocess_params, {}, postprocess_params

    def preprocess(self, image, timeout: float | None = None):
        return _preprocess_one_image(self.image_processor, image, timeout)

    def _forward(self, model_inputs):
        encoded = self.model.encode(model_inputs["pixel_values"].to(self.model.dtype))
        reconstruction = self.model.decode(encoded.codes).reconstruction  # (B, C, H, W)
        return {"reconstruction": reconstruction, "codes": encoded.codes}

    def postprocess(self, model_outputs, return_codes: bool = False, output_type: str = "pil"):
        images = self.image_processor.postprocess(model_outputs["reconstruction"].float(), output_type=output_type)
        result = {"image": images[0]}
        if return_codes:
            result["codes"] = model_outputs["codes"][0]  # (h, w)
        return result


class VQVAEGenerationPipeline(Pipeline):
    r"""
    Draws images from a prior ([`VQVAEPriorForCausalLM`] or [`VQVAEPixelCNNPriorModel`]): sample grids of codes (per class for a class-conditional prior,
    with optional classifier-free guidance), then decode them with the prior's VQ-VAE. Task `"vqvae-generation"`.

    The VQ-VAE is the `vqvae` argument (folder, Hub id or [`VQVAEModel`]) or, by default, the one named in the
    prior's `vqvae_reference.json`. Its codebook size must match the prior's. Images are postprocessed with the
    VQ-VAE's image processor (or the `image_processor` given to `pipeline`).

    Args:
        model ([`VQVAEPriorForCausalLM`] or [`VQVAEPixelCNNPriorModel`]):
            The prior.
        vqvae (`str`, `os.PathLike` or [`VQVAEModel`], *optional*):
            The VQ-VAE that decodes the codes; defaults to the one the prior records.
        vqvae_revision (`str`, *optional*):
            Hub revision of `vqvae` when it is a name.

    Example:

    ```python
    >>> import hf_vqvae
    >>> from transformers import pipeline

    >>> generate = pipeline("vqvae-generation", model="outputs/prior-cifar10")  # or vqvae="outputs/vqvae-cifar10"
    >>> samples = generate(["cat", 5], num_images=2, guidance_scale=2.0, temperature=1.0, seed=0)
    >>> [(s["class_label"], s["label"]) for s in samples]
    [(3, 'cat'), (3, 'cat'), (5, 'dog'), (5, 'dog')]
    >>> unconditional = generate(num_images=4, seed=0)
    ```
    """

    _load_processor = False
    _load_image_processor = False  # the prior has none: images are the VQ-VAE's
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, model, *args, vqvae=None, vqvae_revision=None, **kwargs):
        super().__init__(model, *args, **kwargs)
        if not isinstance(self.model, PRIOR_MODEL_CLASSES):
            raise TypeError(
                f"'vqvae-generation' needs a `VQVAEPriorForCausalLM` or a `VQVAEPixelCNNPriorModel`; got "
                f"{type(self.model).__name__}. For a VQ-VAE use 'vqvae-reconstruction'."
            )
        self.vqvae, image_processor = load_vqvae_for_prior(self.model, vqvae, revision=vqvae_revision)
        self.vqvae.to(self.device)
        if self.image_processor is None:
            self.image_processor = image_processor
        self.model.eval()  # class dropout only belongs in training

    def __call__(self, class_labels=None, **kwargs) -> list[dict[str, Any]]:
        r"""
        Generate images, `num_images` per class label (or `num_images` unconditional ones), in one batch.

        Args:
            class_labels (`int`, `str` or a list of them, *optional*):
                Classes to draw, as ids or names (`config.id2label`); `None` draws unconditional samples (also from
                a class-conditional prior trained with `class_dropout_prob > 0`).
            num_images (`int`, *optional*, defaults to 1):
                Images per class label, or in total when `class_labels` is `None`.
            guidance_scale (`float`, *optional*):
                Classifier-free guidance scale (needs `class_labels`); 1 or `None` is plain conditional sampling.
            temperature (`float`, *optional*):
                Softmax temperature (> 0).
            top_k (`int`, *optional*):
                Sample among the `top_k` most likely codes only (0: all).
            top_p (`float`, *optional*):
                Nucleus sampling: the smallest set of codes with probability >= `top_p`, in (0, 1].
            do_sample (`bool`, *optional*, defaults to `True`):
                `False` takes the most likely code at each step.
            seed (`int`, *optional*):
                Seed of the sampling (the global random state is left untouched): the same seed and arguments give
                the same images.
            generate_kwargs (`dict`, *optional*):
                Other arguments of `generate`.
            return_codes (`bool`, *optional*, defaults to `False`):
                Also return each image's codes.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` (uint8 `(H, W, C)`) or `"pt"` (float `(C, H, W)` in [0, 1]).

        Returns:
            `list[dict]`, one per image, class by class: `image`, `class_label` (`int` or `None`), `label` (the class
            name or `None`) and, with `return_codes=True`, `codes` (`torch.LongTensor` of shape `(h, w)`).
        """
        # The whole request is one input: a list of classes is one batch, not a dataset of inputs.
        return super().__call__({"class_labels": class_labels}, **kwargs)

    def _sanitize_parameters(
        self,
        num_images=None,
        guidance_scale=None,
        temperature=None,
        top_k=None,
        top_p=None,
        do_sample=None,
        seed=None,
        generate_kwargs=None,
        return_codes=None,
        output_type=None,
    ):
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if num_images is not None:
            if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
                raise ValueError(f"`num_images` must be a positive integer; got {num_images!r}.")
            preprocess_params["num_images"] = num_images
        if temperature is not None and not temperature > 0:
            raise ValueError(f"`temperature` must be > 0; got {temperature}.")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"`top_k` must be an integer >= 0 (0 keeps every code); got {top_k!r}.")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must lie in (0, 1]; got {top_p}.")
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        sampling = {name: value for name, value in sampling.items() if value is not None}
        if generate_kwargs is not None or sampling:
            forward_params["generate_kwargs"] = {**(generate_kwargs or {}), **sampling}
        for name, value in (("guidance_scale", guidance_scale), ("seed", seed), ("do_sample", do_sample)):
            if value is not None:
                forward_params[name] = value
        if return_codes is not None:
            postprocess_params["return_codes"] = bool(return_codes)
        if output_type is not None:
            _check_output_type(output_type)
            postprocess_params["output_type"] = output_type
        return preprocess_params, forward_params, postprocess_params

    def _class_ids(self, class_labels) -> list[int] | None:
        """Class ids from ids and/or names; `None` for unconditional samples."""
        if class_labels is None:
            return None
        config = self.model.config
        if config.num_classes == 0:
            raise ValueError("This prior is unconditional (`num_classes` = 0); call it without `class_labels`.")
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.flatten().tolist()
        elif isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        names = {str(name): int(index) for index, name in (config.id2label or {}).items()}
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                if label not in names:
                    raise ValueError(f"Unknown class name {label!r}; the prior's classes are {list(names)}.")
                label = names[label]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < config.num_classes:
                raise ValueError(f"Class labels must be names or ids in [0, {config.num_classes}); got {label!r}.")
            ids.append(label)
        if not ids:
            raise ValueError("`class_labels` is empty; pass at least one class, or `None` for unconditional samples.")
        return ids

    def preprocess(self, inputs, num_images: int = 1):
        ids = self._class_ids(inputs["class_labels"])
        if ids is None:
            return {"class_labels": None, "num_samples": num_images}
        class_labels = torch.tensor([c for c in ids for _ in range(num_images)], dtype=torch.long)  # (N,)
        return {"class_labels": class_labels, "num_samples": len(class_labels)}

    def _forward(self, model_inputs, guidance_scale=None, seed=None, do_sample=True, generate_kwargs=None):
        codes = self.model.generate_codes(
            num_samples=model_inputs["num_samples"],
            class_labels=model_inputs["class_labels"],
            guidance_scale=guidance_scale,
            do_sample=do_sample,
            seed=seed,
            **(generate_kwargs or {}),
        )  # (N, h, w)
        images = self.vqvae.decode(codes.to(self.vqvae.device)).reconstruction  # (N, C, H, W)
        return {"codes": codes, "images": images, "class_labels": model_inputs["class_labels"]}

    def postprocess(self, model_outputs, return_codes: bool = False, output_type: str = "pil"):
        images = self.image_processor.postprocess(model_outputs["images"].float(), output_type=output_type)
        class_labels = model_outputs["class_labels"]
        id2label = self.model.config.id2label or {}
        results = []
        for index in range(len(model_outputs["codes"])):
            class_label = None if class_labels is None else int(class_labels[index])
            result = {
                "image": images[index],
                "class_label": class_label,
                "label": None if class_label is None else id2label.get(class_label, str(class_label)),
            }
            if return_codes:
                result["codes"] = model_outputs["codes"][index]
            results.append(result)
        return results


class VQVAEAnomalyPipeline(Pipeline):
    r"""
    Anomaly scores of images from a [`VQVAEModel`] trained on normal images and, optionally, a prior over its codes:
    preprocess (the model's [`VQVAEImageProcessor`], which resizes to the model's `image_size`), score with
    [`VQVAEAnomalyScorer`], and optionally draw a heat map over the preprocessed image. Task `"vqvae-anomaly"`.

    Scores are deterministic (eval mode, no sampling); higher means more anomalous. `combined_score` needs the
    statistics of normal images: pass `statistics=` (from [`VQVAEAnomalyScorer.fit`]) or call
    [`~VQVAEAnomalyPipeline.fit`] with normal images first; until then it is `None`. `latent_knn` (the score that
    beats the pixel baselines on the one-class benchmarks in the README) also needs a memory bank of other normal
    images: `fit(held_out_normal_images, memory_bank_images=training_images)`.

    Args:
        model ([`VQVAEModel`]):
            The VQ-VAE.
        prior (`str`, `os.PathLike` or [`VQVAEPriorForCausalLM`], *optional*):
            A prior (folder, Hub id or model) trained on the codes of this VQ-VAE, for `prior_nll`.
        prior_revision (`str`, *optional*):
            Hub revision of `prior` when it is a name.
        prior_class_label (`int` or `str`, *optional*):
            The class a class-conditional prior is conditioned on (required for such a prior).
        statistics (`dict`, *optional*):
            The `statistics` of a [`VQVAEAnomalyScorer.fit`] with the same models, for `combined_score` and the
            fitted settings of the other scores.
        background_prior (`str`, `os.PathLike` or [`VQVAEPriorForCausalLM`], *optional*):
            A prior trained on corrupted codes of this VQ-VAE ([`corrupt_codes`]), for `likelihood_ratio`.
        scorer_kwargs (`dict`, *optional*):
            More arguments of [`VQVAEAnomalyScorer`], e.g. `{"restoration_threshold": 0.01}`.

    Example:

    ```python
    >>> import hf_vqvae
    >>> from transformers import pipeline

    >>> detect = pipeline("vqvae-anomaly", model="outputs/vqvae-mnist-0", prior="outputs/prior-mnist-0")
    >>> detect.fit(normal_images)  # for `combined_score`
    >>> out = detect("digit.png", heatmap="prior_nll")
    >>> out["combined_score"], out["heatmap"].size
    (3.71, (28, 28))
    >>> outs = detect([image_1, image_2], batch_size=2)  # a list of dicts
    ```
    """

    _load_processor = False
    _load_image_processor = None  # optional: `from_model_config` when the folder has no preprocessor_config.json
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(
        self,
        model,
        *args,
        prior=None,
        prior_revision=None,
        prior_class_label=None,
        statistics=None,
        background_prior=None,
        scorer_kwargs=None,
        **kwargs,
    ):
        self._background_prior = background_prior
        self._scorer_kwargs = dict(scorer_kwargs or {})
        super().__init__(model, *args, **kwargs)
        if not isinstance(self.model, VQVAEModel):
            raise TypeError(
                f"'vqvae-anomaly' needs a `VQVAEModel`; got {type(self.model).__name__}. Pass the prior as `prior=`."
            )
        if self.image_processor is None:
            self.image_processor = VQVAEImageProcessor.from_model_config(self.model.config)
        self.model.eval()
        self._loaded_priors = {}  # priors given by name, loaded once
        self.scorer = self._make_scorer(prior, prior_revision, prior_class_label, statistics)

    def _make_scorer(self, prior, prior_revision, prior_class_label, statistics) -> VQVAEAnomalyScorer:
        if isinstance(prior, (str, os.PathLike)):
            key = (str(prior), prior_revision)
            if key not in self._loaded_priors:
                self._loaded_priors[key] = load_prior(prior, revision=prior_revision)
            prior = self._loaded_priors[key]
        elif prior is not None and not isinstance(prior, PRIOR_MODEL_CLASSES):
            raise TypeError(
                f"`prior` must be a prior folder, Hub id, `VQVAEPriorForCausalLM` or `VQVAEPixelCNNPriorModel`; got "
                f"{type(prior).__name__}."
            )
        if prior is not None:
            prior = prior.to(self.device).eval()
        background = self._background_prior
        if isinstance(background, (str, os.PathLike)):
            background = self._background_prior = VQVAEPriorForCausalLM.from_pretrained(background)
        if background is not None:
            background = background.to(self.device).eval()
        return VQVAEAnomalyScorer(
            self.model,
            prior,
            class_label=prior_class_label,
            statistics=statistics,
            background_prior=background,
            **self._scorer_kwargs,
        )

    def fit(self, images, batch_size: int = 64, timeout: float | None = None, memory_bank_images=None) -> dict:
        r"""
        Measure the score statistics of normal images, so that later calls return `combined_score` (and, with
        `memory_bank_images`, `latent_knn`).

        Args:
            images (`list` of `str`, `PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
                At least 2 normal images (paths or URLs are loaded).
            memory_bank_images (`list`, *optional*):
                Other normal images (in the same forms), e.g. the VQ-VAE's training images, that `latent_knn`
                measures distances to ([`VQVAEAnomalyScorer.fit`]'s `memory_bank`).
            batch_size (`int`, *optional*, defaults to 64):
                Images preprocessed and scored at once.
            timeout (`float`, *optional*):
                Seconds to wait for an image URL.

        Returns:
            `dict`: the statistics ([`VQVAEAnomalyScorer.fit`]), to pass as `statistics=` next time.
        """
        if not isinstance(images, (list, tuple)):
            raise ValueError(f"`fit` takes a list of normal images; got {type(images).__name__}.")
        if memory_bank_images is not None and not isinstance(memory_bank_images, (list, tuple)):
            raise ValueError(
                f"`memory_bank_images` must be a list of normal images; got {type(memory_bank_images).__name__}."
            )

        def batches(images):
            for start in range(0, len(images), batch_size):
                chunk = [
                    load_image(image, timeout=timeout) if isinstance(image, str) else image
                    for image in images[start : start + batch_size]
                ]
                yield self.image_processor(chunk, return_tensors="pt")["pixel_values"].to(self.device)

        bank = None if memory_bank_images is None else batches(memory_bank_images)
        return self.scorer.fit(batches(images), memory_bank=bank).statistics

    def __call__(self, images, **kwargs) -> dict[str, Any] | list[dict[str, Any]]:
        r"""
        Score one image or a list of images.

        Args:
            images (`str`, `PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                An image (a path or URL is loaded), or a list of images.
            heatmap (`str`, *optional*):
                Also return a heat map (`PIL.Image.Image`) of `"reconstruction_error"`, `"prior_nll"` (needs a
                prior), `"likelihood_ratio"` (needs a background prior) or `"restoration"` (needs a prior and
                `restore=True`) over the preprocessed image.
            restore (`bool`, *optional*, defaults to `False`):
                Also restore the image ([`VQVAEAnomalyScorer.score`]): `restoration_error` and its map.
            heatmap_range (`tuple[float, float]`, *optional*):
                Map values `(vmin, vmax)` drawn without and with full tint; default `(0, the image's maximum)`. Fix it
                to compare images.
            return_maps (`bool`, *optional*, defaults to `False`):
                Also return `reconstruction_error_map` and `prior_nll_map` (`torch.FloatTensor` of shape `(H, W)`).
            prior (`str`, `os.PathLike` or [`VQVAEPriorForCausalLM`], *optional*):
                A prior for this call instead of the pipeline's (folders are loaded once and kept).
            prior_revision (`str`, *optional*):
                Hub revision of `prior` when it is a name.
            prior_class_label (`int` or `str`, *optional*):
                The class a class-conditional prior is conditioned on, for this call.
            statistics (`dict`, *optional*):
                Normal statistics for `combined_score` in this call. A call that changes the prior or its class
                gets no `combined_score` unless it passes the statistics that go with them.
            timeout (`float`, *optional*):
                Seconds to wait for an image URL.
            batch_size (`int`, *optional*, defaults to 1):
                Images per forward pass, for a list of images.

        Returns:
            A `dict` per image (a list of them for a list): every score of `PIPELINE_SCORES` (`float`, or `None`
            when the score needs a model or a `fit` that is missing), and `heatmap` and the maps when asked.
        """
        return super().__call__(images, **kwargs)

    def _sanitize_parameters(
        self,
        heatmap=None,
        heatmap_range=None,
        return_maps=None,
        timeout=None,
        prior=None,
        prior_revision=None,
        prior_class_label=None,
        statistics=None,
        restore=None,
        **kwargs,
    ):
        if kwargs:
            known = ("heatmap", "heatmap_range", "return_maps", "timeout", "prior", "prior_revision")
            known += ("prior_class_label", "statistics", "restore", "batch_size")
            raise TypeError(_unknown_keywords_message("The 'vqvae-anomaly' pipeline", kwargs, known))
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        scorer = getattr(self, "scorer", None)  # `Pipeline.__init__` calls this before `scorer` exists
        if prior is not None or prior_class_label is not None or statistics is not None:
            # A scorer for this call only; the pipeline's own prior and statistics stay as they are.
            scorer = self._make_scorer(
                prior if prior is not None else scorer.prior, prior_revision, prior_class_label, statistics
            )
            forward_params["scorer"] = scorer
        if heatmap is not None:
            if heatmap not in HEATMAP_NAMES:
                raise ValueError(f"`heatmap` must be one of {list(HEATMAP_NAMES)} or None; got {heatmap!r}.")
            if heatmap in ("prior_nll", "restoration") and (scorer is None or scorer.prior is None):
                raise ValueError(f"`heatmap={heatmap!r}` needs a prior: pass `prior=` to the pipeline or the call.")
            if heatmap == "restoration" and not restore:
                raise ValueError("`heatmap='restoration'` needs `restore=True`.")
            if heatmap == "likelihood_ratio" and (scorer is None or scorer.background_prior is None):
                raise ValueError("`heatmap='likelihood_ratio'` needs `background_prior=` when building the pipeline.")
            if heatmap == "latent_knn" and (scorer is None or scorer.memory_bank is None or not scorer.is_fitted):
                raise ValueError(
                    "`heatmap='latent_knn'` needs a memory bank: call `pipe.fit(normal_images, "
                    "memory_bank_images=other_normal_images)` first."
                )
            postprocess_params["heatmap"] = heatmap
        if restore:
            forward_params["restore"] = True
        if heatmap_range is not None:
            if not isinstance(heatmap_range, (list, tuple)) or len(heatmap_range) != 2:
                raise ValueError(f"`heatmap_range` must be `(vmin, vmax)`; got {heatmap_range!r}.")
            postprocess_params["heatmap_range"] = tuple(heatmap_range)
        if return_maps is not None:
            postprocess_params["return_maps"] = bool(return_maps)
        # Maps are only computed when something needs them.
        forward_params["return_maps"] = bool(return_maps) or heatmap is not None
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, image, timeout: float | None = None):
        return _preprocess_one_image(self.image_processor, image, timeout)

    def _forward(
        self, model_inputs, return_maps: bool = False, scorer: VQVAEAnomalyScorer | None = None, restore: bool = False
    ):
        pixel_values = model_inputs["pixel_values"]
        output = (scorer or self.scorer).score(
            pixel_values.to(self.model.device), return_maps=return_maps, restore=restore
        )
        maps_and_scores = {key: value for key, value in output.items() if key not in ("reconstruction", "restoration")}
        return {"pixel_values": pixel_values, **maps_and_scores}

    def postprocess(self, model_outputs, heatmap: str | None = None, heatmap_range=None, return_maps: bool = False):
        result = {}
        for name in PIPELINE_SCORES:
            value = model_outputs.get(name)
            result[name] = None if value is None else float(value[0])
        if return_maps:
            for name in (f"{name}_map" for name in HEATMAP_NAMES):
                value = model_outputs.get(name)
                result[name] = None if value is None else value[0].cpu()  # (H, W)
        if heatmap is not None:
            vmin, vmax = heatmap_range if heatmap_range is not None else (None, None)
            result["heatmap"] = render_anomaly_heatmap(
                model_outputs["pixel_values"][0], model_outputs[f"{heatmap}_map"][0], vmin=vmin, vmax=vmax
            )
        return result


__all__ = ["VQVAEAnomalyPipeline", "VQVAEGenerationPipeline", "VQVAEReconstructionPipeline"]
