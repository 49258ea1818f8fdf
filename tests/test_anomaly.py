"""Tests of `hf_vqvae.anomaly` (scores, maps, baselines, metrics), the "vqvae-anomaly" pipeline and scripts/anomaly.py.

The inliers are smooth, low-amplitude sinusoids; the obvious outliers are uniform noise in [-1, 1]. A tiny VQ-VAE and
a tiny prior are fitted on the inliers for a few dozen steps (well under a second each), once per module.
"""

import io
import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config, make_tiny_prior_config
from PIL import Image
from transformers import pipeline

from hf_vqvae import (
    NearestNeighborBaseline,
    PCABaseline,
    VQVAEAnomalyPipeline,
    VQVAEAnomalyScorer,
    VQVAEImageProcessor,
    VQVAEModel,
    VQVAEPriorForCausalLM,
    anomaly_metrics,
    compression_bits,
    corrupt_codes,
    localization_metrics,
    make_synthetic_defects,
    render_anomaly_heatmap,
    select_score,
)
from hf_vqvae.anomaly import (
    DEFECT_KINDS,
    PNG_COMPRESS_LEVEL,
    corrupt_pixels,
    per_region_overlap,
    pixel_auroc,
)
from hf_vqvae.modeling_vqvae import discretized_gaussian_log_likelihood
from hf_vqvae.pipelines import PIPELINE_SCORES


sys.path.insert(0, str(REPO_ROOT / "scripts"))
import anomaly as anomaly_script  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models spend their time synchronising threads; one thread is faster and leaves the machine alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_images(num_images: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(N, 3, size, size) slow sinusoids of amplitude 0.3-0.5: the normal data."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    y, x = coords[:, None], coords[None, :]
    fy, fx = torch.rand(2, num_images, 1, 1, 1, generator=generator) * 0.5
    phase = torch.rand(num_images, 3, 1, 1, generator=generator) * 2 * math.pi
    amplitude = 0.3 + 0.2 * torch.rand(num_images, 1, 1, 1, generator=generator)
    return amplitude * torch.sin(2 * math.pi * (fy * y + fx * x) + phase)


def noise_images(num_images: int, size: int = 16, seed: int = 100) -> torch.Tensor:
    """(N, 3, size, size) uniform noise in [-1, 1]: obvious outliers."""
    return torch.rand(num_images, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def vqvae():
    """The tiny VQ-VAE (16x16 -> 4x4 codes, K=16) after 60 Adam steps on 64 smooth images."""
    torch.manual_seed(0)
    model = VQVAEModel(make_tiny_config())
    data = smooth_images(64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(data).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def prior(vqvae):
    """An unconditional tiny prior on the 4x4 codes of the smooth images, after 60 AdamW steps."""
    torch.manual_seed(0)
    model = VQVAEPriorForCausalLM(make_tiny_prior_config(grid_size=(4, 4), num_classes=0))
    with torch.no_grad():
        codes = vqvae.encode(smooth_images(64)).codes
    mapping = model.code_mapping
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(mapping.codes_to_input_ids(codes), labels=mapping.codes_to_labels(codes)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def test_images():
    """6 unseen smooth images, then 2 noise images."""
    return torch.cat([smooth_images(6, seed=1), noise_images(2)])


# ---------------------------------------------------------------------------------------------------------- scores


def test_outlier_scores_higher_than_inliers(vqvae, test_images):
    output = VQVAEAnomalyScorer(vqvae).score(test_images)
    errors = output.reconstruction_error
    assert errors.shape == (8,)
    assert errors[6:].min() > 2 * errors[:6].max()
    # The score is the mean of its map, which has the input's size.
    assert output.reconstruction_error_map.shape == (8, 16, 16)
    torch.testing.assert_close(output.reconstruction_error_map.mean((1, 2)), errors)
    expected = (vqvae.decode(output.codes).reconstruction - test_images).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(errors, expected.detach())


def test_baselines_flag_the_outlier(test_images):
    normal = smooth_images(64)
    pca = PCABaseline(n_components=8).fit(normal).score(test_images)
    nearest = NearestNeighborBaseline(chunk_size=5).fit(normal).score(test_images)  # several blocks of each kind
    for scores in (pca, nearest):
        assert scores.shape == (8,)
        assert scores[6:].min() > 2 * scores[:6].max()


def test_pca_baseline_is_exact_on_its_subspace():
    normal = smooth_images(40)
    baseline = PCABaseline(n_components=5).fit(normal)
    inside = baseline.mean + torch.randn(3, 5, dtype=torch.float64) @ baseline.components  # in the fitted subspace
    assert baseline.score(inside.float().reshape(3, 3, 16, 16)).max() < 1e-10
    # Against numpy's SVD: the residual of the top-5 projection.
    data = normal.reshape(40, -1).double().numpy()
    _, _, vh = np.linalg.svd(data - data.mean(0), full_matrices=False)
    query = noise_images(4).reshape(4, -1).double().numpy() - data.mean(0)
    residual = query - query @ vh[:5].T @ vh[:5]
    np.testing.assert_allclose(baseline.score(noise_images(4)).numpy(), (residual**2).mean(1), rtol=1e-5)


def test_nearest_neighbor_baseline_matches_cdist():
    normal, queries = smooth_images(30), torch.cat([smooth_images(5, seed=3), noise_images(3)])
    baseline = NearestNeighborBaseline(chunk_size=7).fit(normal)
    expected = torch.cdist(queries.reshape(8, -1).double(), normal.reshape(30, -1).double()).min(1).values
    torch.testing.assert_close(baseline.score(queries).double(), expected, rtol=1e-5, atol=1e-6)
    assert baseline.score(normal[:4]).abs().max() == 0  # a training image is its own neighbour


@pytest.mark.parametrize("size", [(16, 16), (24, 32)])
def test_maps_have_the_input_size(vqvae, size):
    pixel_values = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    output = VQVAEAnomalyScorer(vqvae).score(pixel_values)
    assert output.reconstruction_error_map.shape == (3, *size)
    assert output.reconstruction.shape == (3, 3, *size)
    assert output.codes.shape == (3, size[0] // 4, size[1] // 4)


def test_prior_nll_score_and_map(vqvae, prior, test_images):
    output = VQVAEAnomalyScorer(vqvae, prior).score(test_images)
    assert output.prior_nll.shape == (8,) and output.code_nll.shape == (8, 4, 4)
    assert output.prior_nll_map.shape == (8, 16, 16)
    # Nearest upsampling: each code's NLL covers its 4x4 patch, so the map's mean is the score.
    torch.testing.assert_close(output.prior_nll_map[:, 4:8, 8:12], output.code_nll[:, 1:2, 2:3].expand(8, 4, 4))
    torch.testing.assert_close(output.prior_nll_map.mean((1, 2)), output.prior_nll)
    # The mean NLL per code is the prior's own training loss on those codes (teacher forcing, nats).
    mapping = prior.code_mapping
    for index in (0, 7):
        codes = output.codes[index : index + 1]
        with torch.no_grad():
            loss = prior(mapping.codes_to_input_ids(codes), labels=mapping.codes_to_labels(codes)).loss
        torch.testing.assert_close(output.prior_nll[index], loss)
    # Noise is less likely under a prior of smooth images' codes.
    noise = VQVAEAnomalyScorer(vqvae, prior).score(noise_images(8, seed=7), return_maps=False)
    assert noise.prior_nll.mean() > output.prior_nll[:6].mean() + 0.3
    assert noise.prior_nll_map is None and noise.reconstruction_error_map is None


def test_prior_grid_and_codebook_must_match(vqvae, test_images):
    scorer = VQVAEAnomalyScorer(vqvae, VQVAEPriorForCausalLM(make_tiny_prior_config(num_classes=0)))  # grid (2, 3)
    with pytest.raises(ValueError, match=r"encode to 4x4 codes, but the prior models 2x3 grids .*8x12"):
        scorer.score(test_images)
    scorer.score(torch.zeros(1, 3, 8, 12))  # the prior's grid
    with pytest.raises(ValueError, match="codebook_size"):
        VQVAEAnomalyScorer(vqvae, VQVAEPriorForCausalLM(make_tiny_prior_config(codebook_size=32, grid_size=(4, 4))))


def test_class_conditional_prior_needs_a_class(vqvae, test_images):
    config = make_tiny_prior_config(grid_size=(4, 4), num_classes=3, id2label={0: "a", 1: "b", 2: "c"})
    conditional = VQVAEPriorForCausalLM(config).eval()
    with pytest.raises(ValueError, match="class-conditional .* pass `class_label`"):
        VQVAEAnomalyScorer(vqvae, conditional)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        VQVAEAnomalyScorer(vqvae, conditional, class_label=3)
    by_id = VQVAEAnomalyScorer(vqvae, conditional, class_label=2).score(test_images).prior_nll
    by_name = VQVAEAnomalyScorer(vqvae, conditional, class_label="c").score(test_images).prior_nll
    other = VQVAEAnomalyScorer(vqvae, conditional, class_label=0).score(test_images).prior_nll
    torch.testing.assert_close(by_id, by_name)
    assert not torch.allclose(by_id, other)  # the class prompt is used
    with pytest.raises(ValueError, match="unconditional"):
        VQVAEAnomalyScorer(
            vqvae, VQVAEPriorForCausalLM(make_tiny_prior_config(grid_size=(4, 4), num_classes=0)), class_label=1
        )


def test_scores_are_deterministic_and_restore_the_mode(vqvae, prior, test_images):
    scorer = VQVAEAnomalyScorer(vqvae, prior)
    vqvae.train()
    try:
        first, second = scorer.score(test_images), scorer.score(test_images)
        assert vqvae.training and not prior.training
    finally:
        vqvae.eval()
    for key in first.keys():
        assert torch.equal(first[key], second[key]), key


def test_a_batch_scores_like_single_images(vqvae, prior, test_images):
    batch = test_images[:4]
    together = VQVAEAnomalyScorer(vqvae, prior).score(batch)
    singles = [VQVAEAnomalyScorer(vqvae, prior).score(batch[i : i + 1]) for i in range(4)]
    in_chunks = VQVAEAnomalyScorer(vqvae, prior, batch_size=3).score(batch)  # chunks of 3 and 1
    for key in ("reconstruction_error", "prior_nll", "reconstruction_error_map", "prior_nll_map", "codes"):
        torch.testing.assert_close(together[key], torch.cat([single[key] for single in singles]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together[key], in_chunks[key], rtol=1e-5, atol=1e-6)


def test_combined_score_needs_fit(vqvae, prior, test_images):
    scorer = VQVAEAnomalyScorer(vqvae, prior)
    output = scorer.score(test_images)
    assert output.combined_score is None and not scorer.is_fitted
    with pytest.raises(ValueError, match=r"call `scorer.fit\(normal_pixel_values\)` first"):
        scorer.combine(output)

    normal = smooth_images(20, seed=11)
    scorer.fit(normal)
    reference = VQVAEAnomalyScorer(vqvae, prior).score(normal)
    statistics = scorer.statistics
    assert statistics["num_images"] == 20
    for name in ("reconstruction_error", "prior_nll"):
        assert statistics[name]["mean"] == pytest.approx(float(reference[name].double().mean()), rel=1e-6)
        assert statistics[name]["std"] == pytest.approx(float(reference[name].double().std()), rel=1e-5)
    combined = scorer.score(test_images).combined_score
    expected = sum(
        (output[name] - statistics[name]["mean"]) / statistics[name]["std"]
        for name in ("reconstruction_error", "prior_nll")
    )
    torch.testing.assert_close(combined, expected)
    assert combined[6:].min() > combined[:6].max()
    # The same statistics from batches of a DataLoader, and reused through `statistics=`.
    loader = torch.utils.data.DataLoader([{"pixel_values": image} for image in normal], batch_size=6)
    from_loader = VQVAEAnomalyScorer(vqvae, prior).fit(loader).statistics
    assert from_loader["prior_nll"]["mean"] == pytest.approx(statistics["prior_nll"]["mean"], rel=1e-5)
    reused = VQVAEAnomalyScorer(vqvae, prior, statistics=statistics).score(test_images).combined_score
    torch.testing.assert_close(reused, combined)
    with pytest.raises(ValueError, match="prior_nll"):
        VQVAEAnomalyScorer(vqvae, prior, statistics=VQVAEAnomalyScorer(vqvae).fit(normal).statistics)
    with pytest.raises(ValueError, match="at least 2"):
        VQVAEAnomalyScorer(vqvae).fit(normal[:1])


@pytest.mark.parametrize(
    "pixel_values, match",
    [
        ([[0.0]], r"must be a float tensor of shape \(batch, 3, H, W\).*got a `list`.*VQVAEImageProcessor"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), r"got a torch.uint8 tensor.*x / 127.5 - 1"),
        (torch.zeros(3, 16, 16), r"got one image \(3, 16, 16\).*pixel_values\[None\]"),
        (torch.zeros(2, 1, 16, 16), r"got shape \(2, 1, 16, 16\).*image_mode='RGB'"),
        (torch.zeros(2, 3, 15, 16), r"positive multiples of 4.*got shape \(2, 3, 15, 16\).*12x16"),
        (torch.zeros(0, 3, 16, 16), "holds no images"),
        (torch.full((2, 3, 16, 16), float("nan")), "1536 NaN or inf values"),
    ],
)
def test_bad_input_is_explained(vqvae, pixel_values, match):
    with pytest.raises(ValueError, match=match):
        VQVAEAnomalyScorer(vqvae).score(pixel_values)


def test_bad_arguments_of_the_scorer_and_baselines(vqvae):
    with pytest.raises(TypeError, match="VQVAEModel"):
        VQVAEAnomalyScorer("vqvae")
    with pytest.raises(ValueError, match="`batch_size`"):
        VQVAEAnomalyScorer(vqvae, batch_size=0)
    with pytest.raises(ValueError, match="class-conditional `prior`"):
        VQVAEAnomalyScorer(vqvae, class_label=1)
    with pytest.raises(ValueError, match="not fitted"):
        PCABaseline().score(smooth_images(2))
    with pytest.raises(ValueError, match="not fitted"):
        NearestNeighborBaseline().score(smooth_images(2))
    with pytest.raises(ValueError, match=r"`n_components` \(32\) must be at most .* = 10"):
        PCABaseline(32).fit(smooth_images(10))
    with pytest.raises(ValueError, match="768 values per image but the baseline was fitted on 3072"):
        NearestNeighborBaseline().fit(smooth_images(4, size=32)).score(smooth_images(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        PCABaseline(2).fit(torch.full((4, 3, 4, 4), float("inf")))


# ---------------------------------------------------------------------------------------------------------- metrics


def test_anomaly_metrics():
    labels = np.array([0, 0, 0, 1, 1])
    perfect = anomaly_metrics(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), labels)
    assert perfect == {"auroc": 1.0, "auprc": 1.0, "num_normal": 3, "num_anomalous": 2}
    assert anomaly_metrics(torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2]), torch.tensor(labels))["auroc"] == 0.0
    # AUROC is the probability that an anomaly outscores a normal image (ties count half).
    rng = np.random.default_rng(0)
    scores, is_anomaly = rng.normal(size=200).round(1), rng.random(200) < 0.3
    pairs = scores[is_anomaly][:, None] - scores[~is_anomaly][None, :]
    expected = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    assert anomaly_metrics(scores, is_anomaly)["auroc"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs normal and anomalous images"):
        anomaly_metrics(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        anomaly_metrics(np.array([0.1, np.nan]), np.array([0, 1]))


def test_heatmap_png():
    image = torch.zeros(3, 8, 12)  # mid gray
    score_map = torch.zeros(8, 12)
    score_map[2:4, 6:9] = 1.0
    heatmap = render_anomaly_heatmap(image, score_map, alpha=1.0, scale=3)
    assert heatmap.size == (36, 24) and heatmap.mode == "RGB"
    pixels = np.asarray(heatmap)
    assert tuple(pixels[0, 0]) == (128, 128, 128)  # no tint where the map is 0
    assert tuple(pixels[2 * 3, 6 * 3]) == (255, 255, 0)  # full tint at vmax
    half = np.asarray(render_anomaly_heatmap(Image.new("L", (12, 8), 0), score_map, vmax=2.0, alpha=1.0))
    assert half[2, 6, 0] > 150 and half[2, 6, 1] == 0 and half[0, 0, 0] == 0  # red at mid-range
    with pytest.raises(ValueError, match=r"the image's shape \(height, width\) = \(8, 12\); got \(12, 8\)"):
        render_anomaly_heatmap(image, score_map.T)


# ---------------------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def saved_models(vqvae, prior, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    vqvae.save_pretrained(root / "vqvae")
    VQVAEImageProcessor.from_model_config(vqvae.config).save_pretrained(root / "vqvae")
    prior.save_pretrained(root / "prior")
    return root


def to_pil(pixel_values: torch.Tensor) -> Image.Image:
    return Image.fromarray(((pixel_values + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())


def test_pipeline(saved_models, vqvae, prior, test_images):
    images = [to_pil(image) for image in test_images[[0, 6]]]  # an inlier and the noise
    detect = pipeline("vqvae-anomaly", model=str(saved_models / "vqvae"))
    assert isinstance(detect, VQVAEAnomalyPipeline)
    result = detect(images[0])
    assert set(result) == set(PIPELINE_SCORES)
    assert result["prior_nll"] is None and result["combined_score"] is None and result["restoration_nll"] is None
    pixel_values = VQVAEImageProcessor.from_model_config(vqvae.config)(images, return_tensors="pt")["pixel_values"]
    assert result["compression_bits"] == float(compression_bits(pixel_values[:1]))
    expected = VQVAEAnomalyScorer(vqvae, prior).score(pixel_values)
    assert result["reconstruction_error"] == pytest.approx(float(expected.reconstruction_error[0]), rel=1e-5)

    # A prior per call (a folder) or per pipeline (a model); lists in batches score like single images.
    with_prior = detect(images, prior=str(saved_models / "prior"), heatmap="prior_nll", batch_size=2)
    assert [r["prior_nll"] for r in with_prior] == pytest.approx(expected.prior_nll.tolist(), rel=1e-5)
    assert with_prior[1]["heatmap"].size == (16, 16)
    detect = pipeline("vqvae-anomaly", model=str(saved_models / "vqvae"), prior=prior)
    one_by_one = [detect(image, return_maps=True) for image in images]
    assert [r["prior_nll"] for r in one_by_one] == pytest.approx(expected.prior_nll.tolist(), rel=1e-5)
    assert one_by_one[1]["prior_nll_map"].shape == (16, 16)
    torch.testing.assert_close(one_by_one[1]["reconstruction_error_map"], expected.reconstruction_error_map[1])

    statistics = detect.fit([to_pil(image) for image in smooth_images(10, seed=5)])
    assert {"num_images", "reconstruction_error", "prior_nll", "nll_bits", "restoration_nll_threshold"} <= set(
        statistics
    )
    inlier, outlier = detect(images, batch_size=2)
    assert outlier["combined_score"] > inlier["combined_score"]
    assert outlier["nll_bits"] > inlier["nll_bits"] and inlier["restoration_error"] is None
    restored = detect(images[1], restore=True, heatmap="restoration", return_maps=True)
    assert restored["restoration_error"] > 0 and restored["restoration_map"].shape == (16, 16)
    assert restored["heatmap"].size == (16, 16)
    with pytest.raises(ValueError, match="needs `restore=True`"):
        detect(images[0], heatmap="restoration")
    with pytest.raises(ValueError, match="needs `background_prior=`"):
        detect(images[0], heatmap="likelihood_ratio")
    with_background = pipeline("vqvae-anomaly", model=vqvae, prior=prior, background_prior=prior)
    assert with_background(images[0], heatmap="likelihood_ratio")["likelihood_ratio"] == 0
    with pytest.raises(ValueError, match="`heatmap` must be one of"):
        detect(images[0], heatmap="pixels")
    with pytest.raises(ValueError, match="needs a prior"):
        pipeline("vqvae-anomaly", model=str(saved_models / "vqvae"))(images[0], heatmap="prior_nll")
    with pytest.raises(TypeError, match="needs a `VQVAEModel`"):
        pipeline("vqvae-anomaly", model=prior)
    with pytest.raises(ValueError, match="needs a memory bank"):
        detect(images[0], heatmap="latent_knn")
    detect.fit([to_pil(image) for image in smooth_images(10, seed=5)], memory_bank_images=images[:1] * 3)
    with_bank = detect(images, heatmap="latent_knn", batch_size=2)
    assert with_bank[1]["latent_knn"] > with_bank[0]["latent_knn"] and with_bank[1]["heatmap"].size == (16, 16)


# ---------------------------------------------------------------------------------------------------------- script


def write_parquet(path, images: torch.Tensor, labels: list[int]):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["smooth", "noise"])})
    rows = {"image": [to_pil(image) for image in images], "label": labels}
    Dataset.from_dict(rows, features=features).to_parquet(str(path))


@pytest.fixture(scope="module")
def parquet_data(tmp_path_factory):
    """24 smooth (class 0) and 24 noise (class 1) training images, 8 + 8 test images, 16x16."""
    root = tmp_path_factory.mktemp("data")
    write_parquet(
        root / "train.parquet", torch.cat([smooth_images(24, seed=20), noise_images(24, seed=21)]), [0] * 24 + [1] * 24
    )
    write_parquet(
        root / "test.parquet", torch.cat([smooth_images(8, seed=22), noise_images(8, seed=23)]), [0] * 8 + [1] * 8
    )
    return root


def script_args(data, output_dir, extra):
    return [
        "--train_data_files",
        str(data / "train.parquet"),
        "--test_data_files",
        str(data / "test.parquet"),
        "--label_column",
        "label",
        "--one_class_protocol",
        "--output_dir",
        str(output_dir),
        "--pca_components",
        "4",
        "--eval_batch_size",
        "8",
        "--num_grid_images",
        "3",
        "--cache_dir",
        str(data / "cache"),
        *extra,
    ]


@pytest.mark.slow  # trains a VQ-VAE and a prior per class, each in a child process (scripts/train_*.py)
def test_script_one_class_protocol(parquet_data, tmp_path):
    output_dir = tmp_path / "report"
    fit = [
        "--fit",
        "--vqvae_steps",
        "2",
        "--prior_steps",
        "2",
        "--train_batch_size",
        "8",
        "--vqvae_config_overrides",
        "hidden_channels=8,channel_multipliers=(1,2),num_res_blocks=1,"
        "res_hidden_channels=8,codebook_size=16,codebook_dim=4",
        "--prior_config_overrides",
        "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
        "--background_code_substitution_rate",
        "0.2",
        "--localization_images",
        "4",
        "--validation_anomalies",
        "outliers",
    ]
    anomaly_script.main(anomaly_script.parse_args(script_args(parquet_data, output_dir, fit)))

    results = json.loads((output_dir / "results.json").read_text())
    assert list(results["runs"]) == ["class-0", "class-1"]
    score_types = {*anomaly_script.MODEL_SCORES, "selected", "compression_bits", "pca", "nearest_neighbor"}
    for name, run in results["runs"].items():
        assert set(run["metrics"]) == score_types
        assert run["num_normal_train"] == 24 and run["num_test_anomalous"] == 8 and run["num_model_train"] == 20
        # The choice is made on the 2 validation images of the hold-out and their synthetic defects.
        selection = run["selection"]
        assert selection["best"] in anomaly_script.MODEL_SCORES and selection["num_normal"] == 2
        assert run["metrics"]["selected"] == {"score": selection["best"], **run["metrics"][selection["best"]]}
        localization = run["localization"]
        assert {"restoration", "reconstruction_error", "latent_knn", "pca_residual"} <= set(localization["metrics"])
        saved = np.load(output_dir / localization["data"])
        assert saved["images"].shape == (4, 3, 16, 16) and saved["masks"].shape == (4, 16, 16) and saved["masks"].any()
        assert (output_dir / name / "background-prior" / "model.safetensors").exists()
        assert run["milliseconds_per_test_image"] > 0
        for metrics in run["metrics"].values():
            assert 0 <= metrics["auroc"] <= 1 and 0 <= metrics["auprc"] <= 1
        for figure in run["figures"].values():
            assert Image.open(output_dir / figure).size[0] > 0
        # The models trained in this process from the run's normal images (2 are held out for the statistics).
        assert (output_dir / name / "vqvae" / "model.safetensors").exists()
        assert (output_dir / name / "prior" / "vqvae_reference.json").exists()
        assert run["statistics"]["num_images"] == 2
    # Noise is far from smooth images in pixel space: the baselines separate the classes when smooth is normal.
    assert results["runs"]["class-0"]["metrics"]["pca"]["auroc"] == 1.0
    assert results["runs"]["class-0"]["metrics"]["nearest_neighbor"]["auroc"] == 1.0
    for name in score_types:
        runs = results["runs"].values()
        assert results["mean"][name]["auroc"] == pytest.approx(np.mean([r["metrics"][name]["auroc"] for r in runs]))
    report = (output_dir / "report.md").read_text()
    assert (
        "| normal | reconstruction error | prior NLL | combined | NLL (bits) |" in report
        and "## Localisation" in report
    )
    assert "| 0 (smooth) |" in report and "| **mean** |" in report and "## AUPRC (%)" in report
    chosen = results["chosen_for_data_set"]
    assert chosen["score"] in anomaly_script.MODEL_SCORES and chosen["num_runs"] == 2
    assert chosen["test_auroc"] == pytest.approx(results["mean"][chosen["score"]]["auroc"])
    assert "Chosen for the data set" in report and "whole-image transformation" in report

    # Scoring the saved models again (`--model` with `{class}`) gives the same numbers: scores are deterministic.
    given = [
        "--model",
        str(output_dir / "class-{class}" / "vqvae"),
        "--prior",
        str(output_dir / "class-{class}" / "prior"),
        "--background_prior",
        str(output_dir / "class-{class}" / "background-prior"),
        "--baselines",
    ]
    rescored = anomaly_script.main(anomaly_script.parse_args(script_args(parquet_data, tmp_path / "rescored", given)))
    # A class for an unconditional prior is refused, and the message names the flag.
    with pytest.raises(ValueError, match="`--prior_class_label` 'smooth': The prior is unconditional"):
        anomaly_script.main(
            anomaly_script.parse_args(
                script_args(parquet_data, tmp_path / "labelled", [*given, "--prior_class_label", "smooth"])
            )
        )
    for name in ("class-0", "class-1"):
        for score in ("reconstruction_error", "prior_nll", "likelihood_ratio"):
            assert rescored["runs"][name]["metrics"][score] == results["runs"][name]["metrics"][score]

    # Run again over the trained models: they are reused, and their recorded training time is reported as earlier.
    assert results["runs"]["class-0"]["models_reused"] is False
    recorded = json.loads((output_dir / "class-0" / "training_seconds.json").read_text())["seconds"]
    again = anomaly_script.main(
        anomaly_script.parse_args(
            script_args(parquet_data, output_dir, [*fit, "--normal_classes", "0", "--overwrite_results"])
        )
    )
    run = again["runs"]["class-0"]
    assert run["models_reused"] is True and run["seconds"]["train"] == round(recorded, 1)
    assert run["metrics"]["latent_knn"] == results["runs"]["class-0"]["metrics"]["latent_knn"]
    assert f"| {round(recorded, 1)} (earlier) |" in (output_dir / "report.md").read_text()


def test_script_baselines_only(parquet_data, tmp_path):
    results = anomaly_script.main(
        anomaly_script.parse_args(
            script_args(parquet_data, tmp_path, ["--baselines_only", "--normal_classes", "smooth"])
        )
    )
    run = results["runs"]["class-0"]
    assert list(results["runs"]) == ["class-0"] and set(run["metrics"]) == {"pca", "nearest_neighbor"}
    assert run["metrics"]["pca"]["auroc"] == 1.0 and run["ranked_by"] == "pca"
    assert "| 0 (smooth) | 100.0 | 100.0 |" in (tmp_path / "report.md").read_text()


def test_script_rejects_bad_arguments(parquet_data, tmp_path):
    parse = anomaly_script.parse_args
    with pytest.raises(ValueError, match="exactly one of `--fit`"):
        parse(script_args(parquet_data, tmp_path, ["--fit", "--model", "x"]))
    with pytest.raises(ValueError, match="need the class column"):
        parse(["--fit", "--one_class_protocol", "--train_data_files", "a", "--test_data_files", "b"])
    with pytest.raises(ValueError, match="only `--one_class_protocol` fills in"):
        parse(["--model", "m-{class}", "--train_data_files", "a", "--test_data_files", "b"])
    with pytest.raises(ValueError, match="neither a class id nor a name"):
        anomaly_script.main(
            parse(script_args(parquet_data, tmp_path, ["--baselines_only", "--normal_classes", "cat"]))
        )


def to_png_bytes(pixel_values: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    to_pil(pixel_values).save(buffer, format="PNG")
    return buffer.getvalue()


def test_script_on_bad_example(parquet_data, tmp_path):
    """`--on_bad_example`: `error` names the test row and says how to skip; `skip` scores the other rows, leaves the
    bad one out of the scores and the labels, and lists it in skipped_examples.jsonl and results.json."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    from hf_vqvae.training.bad_examples import BadExampleError

    images = [{"bytes": to_png_bytes(image), "path": None} for image in smooth_images(4, seed=30)]
    images += [{"bytes": to_png_bytes(image), "path": None} for image in noise_images(4, seed=31)]
    images[5] = {"bytes": b"not an image", "path": None}
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["smooth", "noise"])})
    data = tmp_path / "data"
    data.mkdir()
    Dataset.from_dict({"image": images, "label": [0] * 4 + [1] * 4}, features=features).to_parquet(
        str(data / "test.parquet")
    )
    (data / "train.parquet").write_bytes((parquet_data / "train.parquet").read_bytes())
    argv = ["--baselines_only", "--normal_classes", "smooth", "--cache_dir", str(tmp_path / "cache")]
    with pytest.raises(BadExampleError, match=r"(?s)Row 5 of split 'test'.*--on_bad_example skip"):
        anomaly_script.main(anomaly_script.parse_args(script_args(data, tmp_path / "error", argv)))
    results = anomaly_script.main(
        anomaly_script.parse_args(script_args(data, tmp_path / "skip", [*argv, "--on_bad_example", "skip"]))
    )
    run = results["runs"]["class-0"]
    assert results["num_test"] == 7 and run["num_test_anomalous"] == 3 and results["num_skipped"] == 1
    skipped = [json.loads(line) for line in (tmp_path / "skip" / "skipped_examples.jsonl").read_text().splitlines()]
    assert [(row["split"], row["index"]) for row in skipped] == [("test", 5)]
    assert run["metrics"]["pca"]["auroc"] == 1.0


def test_script_resumes_finished_classes(parquet_data, tmp_path):
    """A rerun keeps the classes already in results.json (same settings) and runs only the others; other settings
    are refused unless `--overwrite_results`."""
    first = anomaly_script.main(
        anomaly_script.parse_args(script_args(parquet_data, tmp_path, ["--baselines_only", "--normal_classes", "0"]))
    )
    assert list(first["runs"]) == ["class-0"]
    (tmp_path / "results.json").write_text(
        (tmp_path / "results.json").read_text().replace('"num_normal_train": 24', '"num_normal_train": -1')
    )  # a mark: a kept run is read back, not measured again
    second = anomaly_script.main(anomaly_script.parse_args(script_args(parquet_data, tmp_path, ["--baselines_only"])))
    assert list(second["runs"]) == ["class-0", "class-1"]
    assert second["runs"]["class-0"]["num_normal_train"] == -1 and second["runs"]["class-1"]["num_normal_train"] == 24
    assert second["mean"]["pca"]["num_runs"] == 2
    changed = ["--baselines_only", "--pca_components", "3"]
    with pytest.raises(ValueError, match=r"other settings \(different: \['pca_components'\]\).*--overwrite_results"):
        anomaly_script.main(anomaly_script.parse_args(script_args(parquet_data, tmp_path, changed)))
    again = anomaly_script.main(
        anomaly_script.parse_args(script_args(parquet_data, tmp_path, [*changed, "--overwrite_results"]))
    )
    assert again["runs"]["class-0"]["num_normal_train"] == 24
    # Workers that ran other classes elsewhere: `--merge_results` keeps their runs too, in class order.
    worker = tmp_path / "worker"
    anomaly_script.main(
        anomaly_script.parse_args(script_args(parquet_data, worker, [*changed, "--normal_classes", "1"]))
    )
    (worker / "results.json").write_text(
        (worker / "results.json").read_text().replace('"num_normal_train": 24', '"num_normal_train": -2')
    )
    merged = anomaly_script.main(
        anomaly_script.parse_args(
            script_args(parquet_data, tmp_path / "merged", [*changed, "--merge_results", str(worker / "results.json")])
        )
    )
    assert list(merged["runs"]) == ["class-0", "class-1"] and merged["runs"]["class-1"]["num_normal_train"] == -2
    assert merged["runs"]["class-0"]["num_normal_train"] == 24
    with pytest.raises(ValueError, match="does not exist"):
        anomaly_script.main(
            anomaly_script.parse_args(
                script_args(parquet_data, tmp_path / "m2", [*changed, "--merge_results", "no.json"])
            )
        )


def test_script_readme_block(parquet_data, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- anomaly-test:start -->\nold table\n<!-- anomaly-test:end -->\n\nAfter.\n")
    extra = ["--baselines_only", "--readme", str(readme), "--readme_block", "anomaly-test"]
    results = anomaly_script.main(anomaly_script.parse_args(script_args(parquet_data, tmp_path / "out", extra)))
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title") and text.endswith("After.\n")
    assert "| PCA (4) | nearest neighbour |" in text and results["command"] in text
    with pytest.raises(ValueError, match="must hold the lines"):
        anomaly_script.main(
            anomaly_script.parse_args(script_args(parquet_data, tmp_path / "out", [*extra[:-1], "missing"]))
        )


def test_script_new_flags_are_checked(parquet_data, tmp_path):
    parse = anomaly_script.parse_args
    model = ["--model", "m", "--prior", "p"]
    assert parse(
        script_args(parquet_data, tmp_path, [*model, "--prior_class_label", "automobile"])
    ).prior_class_label == ("automobile")
    assert parse(script_args(parquet_data, tmp_path, [*model, "--prior_class_label", "3"])).prior_class_label == 3
    cases = [
        (["--model", "m", "--background_prior", "b"], "give `--prior` too"),
        ([*model, "--background_code_substitution_rate", "0.2"], "with `--model`, give a trained one"),
        (["--fit", "--background_code_substitution_rate", "0"], r"at a rate in \(0, 1\]"),
        ([*model, "--restoration_quantile", "1"], "`--restoration_quantile` must lie in"),
        ([*model, "--localization_images", "1"], "`--localization_images` must be 0"),
        ([*model, "--validation_fraction", "1"], "`--validation_fraction` must lie in"),
        ([*model, "--background_prior", "b-{class}"], "only `--one_class_protocol` fills in"),
    ]
    for extra, message in cases:
        argv = script_args(parquet_data, tmp_path, extra)
        if "{class}" in " ".join(extra):
            argv.remove("--one_class_protocol")
        with pytest.raises(ValueError, match=message):
            parse(argv)


# ---------------------------------------------------------------------------------------------------------- issue 19
# Complexity-corrected likelihood, likelihood ratio, restoration, localisation, score selection.


def textured_images(num_images: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth images with a finer stripe pattern on top: enough texture that every kind of defect changes pixels."""
    stripes = 0.4 * torch.sin(torch.arange(size) * 2.0)[None, None, :, None]  # (1, 1, size, 1)
    return (smooth_images(num_images, size, seed) + stripes).clamp(-1, 1)


def pattern_images(num_images: int, seed: int = 0) -> torch.Tensor:
    """(N, 3, 16, 16) one fixed pattern of gradients, at amplitudes 0.6-1, plus a little noise: very regular normal
    data, whose codes at each position a prior learns to predict well."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.8, 0.8, 16)
    y, x = ramp[:, None].expand(16, 16), ramp[None, :].expand(16, 16)
    pattern = torch.stack([y, x, -y * x])  # (3, 16, 16)
    amplitude = 0.6 + 0.4 * torch.rand(num_images, 1, 1, 1, generator=generator)
    return (amplitude * pattern + 0.03 * torch.randn(num_images, 3, 16, 16, generator=generator)).clamp(-1, 1)


PATCH = (slice(4, 8), slice(8, 12))  # one 4x4 code patch: code (1, 2)


def paste_patch(images: torch.Tensor) -> torch.Tensor:
    """The images with a saturated magenta square (a colour no normal image has) pasted over `PATCH`."""
    pasted = images.clone()
    pasted[:, :, PATCH[0], PATCH[1]] = torch.tensor([1.0, -1.0, 1.0])[:, None, None]
    return pasted


@pytest.fixture(scope="module")
def pattern_scorer():
    """A tiny VQ-VAE and prior trained (60 Adam steps each, ~2 s) on `pattern_images`, fitted on 32 unseen ones."""
    torch.manual_seed(0)
    vqvae = VQVAEModel(make_tiny_config())
    data = pattern_images(32)
    optimizer = torch.optim.Adam(vqvae.parameters(), lr=3e-3)
    for _ in range(60):
        loss = vqvae(data).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vqvae.eval()
    torch.manual_seed(0)
    prior = VQVAEPriorForCausalLM(make_tiny_prior_config(grid_size=(4, 4), num_classes=0))
    with torch.no_grad():
        codes = vqvae.encode(data).codes
    mapping = prior.code_mapping
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    for _ in range(60):
        loss = prior(mapping.codes_to_input_ids(codes), labels=mapping.codes_to_labels(codes)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return VQVAEAnomalyScorer(vqvae, prior.eval()).fit(pattern_images(32, seed=5))


@pytest.fixture(scope="module")
def fitted_scorer(vqvae, prior):
    """Scorer with the tiny models, fitted on 32 unseen smooth images (Gaussian scale, threshold, statistics)."""
    return VQVAEAnomalyScorer(vqvae, prior).fit(smooth_images(32, seed=5))


def test_compression_bits_is_png_length_and_deterministic():
    images = torch.cat([torch.zeros(1, 3, 16, 16), noise_images(1), smooth_images(1)])
    bits = compression_bits(images)
    torch.testing.assert_close(bits, compression_bits(images.clone()), rtol=0, atol=0)  # deterministic
    for image, length in zip(images, bits):
        array = ((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
        assert length == 8 * len(buffer.getvalue())
    assert bits[0] < bits[2] < bits[1]  # flat < smooth < noise
    gray = compression_bits(images[:, :1])
    assert gray.shape == (3,) and (gray < bits).all()
    with pytest.raises(ValueError, match="gray \\(1\\) or RGB \\(3\\)"):
        compression_bits(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="float tensor"):
        compression_bits(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_complexity_corrected_nll(vqvae, prior, fitted_scorer, test_images):
    # Before `fit` an MSE decoder has no Gaussian scale: no bits.
    assert VQVAEAnomalyScorer(vqvae, prior).score(test_images).nll_bits is None
    log_scale = fitted_scorer.statistics["reconstruction_log_scale"]
    assert math.log(1e-3) < log_scale < 0
    output = fitted_scorer.score(test_images)
    # By hand: discretized-Gaussian bits of the pixels around the reconstruction, plus the prior's bits of the codes.
    decoded = vqvae.decode(output.codes)
    log_px = discretized_gaussian_log_likelihood(
        test_images, decoded.reconstruction, torch.full_like(decoded.reconstruction, log_scale)
    )
    code_bits = -prior.code_log_likelihood(output.codes).flatten(1).sum(1) / math.log(2)
    expected = -log_px.flatten(1).sum(1) / math.log(2) + code_bits
    torch.testing.assert_close(output.nll_bits, expected.detach(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(output.compression_bits, compression_bits(test_images))
    torch.testing.assert_close(output.complexity_corrected_nll, output.nll_bits - output.compression_bits)
    # Noise costs the most bits under the model, and also the most PNG bits (it is incompressible): with this weak
    # decoder (Gaussian scale ~0.26) the correction removes most of the gap, so the corrected score is not asserted.
    assert output.nll_bits[6:].min() > output.nll_bits[:6].max()
    assert output.compression_bits[6:].min() > output.compression_bits[:6].max()
    # A decoder with its own pixel likelihood plugs in as `pixel_log_likelihood`: here a constant 1 nat per value.
    constant = VQVAEAnomalyScorer(
        vqvae, prior, pixel_log_likelihood=lambda model, pixels, codes: -torch.ones_like(pixels)
    ).score(test_images)
    torch.testing.assert_close(constant.nll_bits, 3 * 16 * 16 / math.log(2) + code_bits.detach(), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="must return log p"):
        VQVAEAnomalyScorer(vqvae, pixel_log_likelihood=lambda model, pixels, codes: pixels[:, 0, 0]).score(test_images)


def test_likelihood_ratio_with_identical_models_is_zero(vqvae, prior, fitted_scorer, test_images):
    same_prior = VQVAEAnomalyScorer(vqvae, prior, background_prior=prior).score(test_images)
    assert same_prior.likelihood_ratio.abs().max() == 0 and same_prior.likelihood_ratio_map.abs().max() == 0
    both = VQVAEAnomalyScorer(
        vqvae, prior, background_prior=prior, background_vqvae=vqvae, statistics=fitted_scorer.statistics
    )
    both.statistics["background_reconstruction_log_scale"] = both.statistics["reconstruction_log_scale"]
    output = both.score(test_images)
    assert output.likelihood_ratio.abs().max() == 0 and output.likelihood_ratio_map.abs().max() == 0


def test_likelihood_ratio_against_a_background_prior(vqvae, prior, test_images):
    torch.manual_seed(1)
    background = VQVAEPriorForCausalLM(make_tiny_prior_config(grid_size=(4, 4), num_classes=0)).eval()
    output = VQVAEAnomalyScorer(vqvae, prior, background_prior=background).score(test_images)
    # Without a background VQ-VAE the pixel terms cancel: the ratio is the prior's bits minus the background's.
    expected = (prior.code_log_likelihood(output.codes) - background.code_log_likelihood(output.codes)).flatten(1).sum(
        1
    ) / -math.log(2)
    torch.testing.assert_close(output.likelihood_ratio, expected, rtol=1e-5, atol=1e-4)
    # Its map spreads each code's bits over the code's 4x4 pixels: the sum over pixels is the score.
    assert output.likelihood_ratio_map.shape == (8, 16, 16)
    torch.testing.assert_close(output.likelihood_ratio_map.sum((1, 2)), output.likelihood_ratio, rtol=1e-4, atol=1e-3)


def test_corrupt_codes():
    codes = torch.randint(0, 16, (200, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(corrupt_codes(codes, 0.0, 16), codes)
    first = corrupt_codes(codes, 0.3, 16, generator=torch.Generator().manual_seed(1))
    again = corrupt_codes(codes, 0.3, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.shape == codes.shape and first.min() >= 0 and first.max() < 16
    changed = float((first != codes).float().mean())
    assert abs(changed - 0.3 * 15 / 16) < 0.03  # a substitution may draw the same code
    noisy = corrupt_pixels(smooth_images(4), 1.0, generator=torch.Generator().manual_seed(0))
    levels = (noisy + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)  # 8-bit values
    with pytest.raises(ValueError, match="substitution probability"):
        corrupt_codes(codes, 1.5, 16)
    with pytest.raises(ValueError, match=r"must lie in \[0, 8\)"):
        corrupt_codes(codes, 0.1, 8)


def test_pasted_patch_scores_higher_and_its_maps_peak_inside(pattern_scorer):
    clean = pattern_images(6, seed=1)
    pasted = paste_patch(clean)
    patch = torch.zeros(16, 16, dtype=torch.bool)
    patch[PATCH] = True
    clean_output = pattern_scorer.score(clean, restore=True)
    output = pattern_scorer.score(pasted, restore=True)
    for name in (
        "reconstruction_error",
        "prior_nll",
        "nll_bits",
        "complexity_corrected_nll",
        "restoration_nll",
        "restoration_error",
        "combined_score",
    ):
        assert (output[name] > clean_output[name]).all(), name
    # The patch makes codes unlikely (the encoder's receptive field spreads it to the codes around it too)...
    assert (output.unlikely_codes.sum((1, 2)) > clean_output.unlikely_codes.sum((1, 2))).all()
    # ...and the pixel maps, at the input size, peak inside the patch.
    for name in ("restoration_map", "reconstruction_error_map"):
        maps = output[name]
        assert maps.shape == (6, 16, 16)
        assert patch.flatten()[maps.flatten(1).argmax(1)].all(), name
    assert localization_metrics(output.restoration_map, patch.expand(6, 16, 16))["pixel_auroc"] > 0.9


def test_restoration_keeps_likely_codes(pattern_scorer):
    scorer = pattern_scorer
    prior = scorer.prior
    pasted = paste_patch(pattern_images(4, seed=2))
    output = scorer.score(pasted, restore=True)
    unlikely = output.unlikely_codes
    assert unlikely.any() and not unlikely.all()
    assert torch.equal(output.restored_codes[~unlikely], output.codes[~unlikely])
    threshold = scorer.statistics["restoration_nll_threshold"]
    torch.testing.assert_close(output.restoration_nll, (output.code_nll * (output.code_nll > threshold)).sum((1, 2)))
    # Each re-drawn code is likely given the (restored) codes before it.
    redrawn = -prior.code_log_likelihood(output.restored_codes)
    assert (redrawn[unlikely] <= threshold + 1e-4).all()
    # Deterministic, and the same image restores the same way alone or in a batch.
    again = scorer.score(pasted, restore=True)
    alone = scorer.score(pasted[2:3], restore=True)
    assert torch.equal(output.restored_codes, again.restored_codes)
    assert torch.equal(output.restored_codes[2:3], alone.restored_codes)
    torch.testing.assert_close(output.restoration_map, (pasted - output.restoration).abs().mean(1))
    # With a threshold no code falls below, nothing changes: the restoration is the reconstruction.
    nothing = VQVAEAnomalyScorer(scorer.vqvae, prior, restoration_threshold=1e-30).score(pasted, restore=True)
    assert not nothing.unlikely_codes.any() and torch.equal(nothing.restored_codes, nothing.codes)
    torch.testing.assert_close(nothing.restoration, nothing.reconstruction)
    assert (nothing.restoration_nll == 0).all()
    with pytest.raises(ValueError, match="needs the threshold"):
        VQVAEAnomalyScorer(scorer.vqvae, prior).score(pasted, restore=True)
    with pytest.raises(ValueError, match="give the scorer a `prior`"):
        VQVAEAnomalyScorer(scorer.vqvae).score(pasted, restore=True)


def test_fit_measures_every_available_score(vqvae, prior, fitted_scorer):
    statistics = fitted_scorer.statistics
    assert set(fitted_scorer.available_scores) == {
        "reconstruction_error",
        "prior_nll",
        "nll_bits",
        "compression_bits",
        "complexity_corrected_nll",
        "restoration_nll",
    }
    for name in fitted_scorer.available_scores:
        assert statistics[name]["std"] >= 0 and math.isfinite(statistics[name]["mean"]), name
    # The threshold lets `restoration_quantile` of the normal codes through as unlikely.
    normal = fitted_scorer.score(smooth_images(32, seed=5), return_maps=False)
    share = float(normal.unlikely_codes.float().mean())
    assert 0 < share <= 0.02
    # The fitted settings come back with `statistics=`.
    reused = VQVAEAnomalyScorer(vqvae, prior, statistics=statistics).score(smooth_images(3, seed=9))
    torch.testing.assert_close(reused.nll_bits, fitted_scorer.score(smooth_images(3, seed=9)).nll_bits)


def test_synthetic_defect_masks_match_changed_pixels():
    images = textured_images(12)
    defected, masks, kinds = make_synthetic_defects(images, seed=0)
    assert kinds == list(DEFECT_KINDS) * 3 and masks.shape == (12, 16, 16) and masks.dtype == torch.bool
    torch.testing.assert_close(masks, (defected != images).any(1), rtol=0, atol=0)
    assert masks.flatten(1).any(1).all()  # every image got a visible defect
    changed = (defected - images).abs().amax(1)
    assert (changed[masks] >= 0.05).all()
    levels = (defected[masks[:, None].expand_as(defected)] + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)  # 8-bit values inside the defects
    again, again_masks, _ = make_synthetic_defects(images, seed=0)
    assert torch.equal(again, defected) and torch.equal(again_masks, masks)
    other, _, _ = make_synthetic_defects(images, seed=1)
    assert not torch.equal(other, defected)
    # Patches from other images.
    sources = noise_images(3)
    pasted, patch_masks, _ = make_synthetic_defects(images[:2], kinds=["patch"], source_pixel_values=sources)
    assert patch_masks.any() and torch.equal(patch_masks, (pasted != images[:2]).any(1))
    with pytest.raises(ValueError, match="`kinds`"):
        make_synthetic_defects(images, kinds=["stain"])
    with pytest.raises(ValueError, match="another image"):
        make_synthetic_defects(images[:1], kinds=["patch"])
    with pytest.raises(ValueError, match="defect_size"):
        make_synthetic_defects(images, defect_size=(0.5, 0.2))


def test_pixel_auroc_and_pro_on_hand_made_maps():
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = True  # region A: one pixel
    masks[0, 2:4, 3] = True  # region B: three pixels
    masks[0, 3, 2] = True
    perfect = masks.astype(float)
    assert pixel_auroc(perfect, masks) == 1.0 and per_region_overlap(perfect, masks) == pytest.approx(1.0)
    assert pixel_auroc(1 - perfect, masks) == 0.0 and per_region_overlap(1 - perfect, masks) == pytest.approx(0.0)
    # A map that finds only region A (normal pixels and B all 0): AUROC = (1 * 1 + 3 * 0.5) / 4 over the
    # 4 anomalous pixels (ties count half); each region counts once in PRO, so PRO = 0.5 at every FPR.
    only_a = np.zeros((1, 4, 4))
    only_a[0, 0, 0] = 1.0
    assert pixel_auroc(only_a, masks) == pytest.approx(0.625)
    assert per_region_overlap(only_a, masks) == pytest.approx(0.5)
    assert localization_metrics(torch.from_numpy(only_a), torch.from_numpy(masks)) == pytest.approx(
        {"pixel_auroc": 0.625, "pro": 0.5}
    )
    with pytest.raises(ValueError, match="anomalous and normal pixels"):
        pixel_auroc(only_a, np.zeros_like(masks))
    with pytest.raises(ValueError, match="same shape|both have shape"):
        per_region_overlap(only_a[0], masks)
    with pytest.raises(ValueError, match="max_fpr"):
        per_region_overlap(only_a, masks, max_fpr=0)


def test_pca_residual_map():
    normal = smooth_images(40)
    baseline = PCABaseline(n_components=5).fit(normal)
    queries = paste_patch(smooth_images(3, seed=4))
    maps = baseline.score_map(queries)
    assert maps.shape == (3, 16, 16)
    data = normal.reshape(40, -1).double().numpy()
    _, _, vh = np.linalg.svd(data - data.mean(0), full_matrices=False)
    centered = queries.reshape(3, -1).double().numpy() - data.mean(0)
    residual = centered - centered @ vh[:5].T @ vh[:5]
    np.testing.assert_allclose(maps.numpy(), np.abs(residual).reshape(3, 3, 16, 16).mean(1), rtol=1e-4, atol=1e-6)
    patch = torch.zeros(3, 16, 16, dtype=torch.bool)
    patch[:, 4:8, 8:12] = True
    assert pixel_auroc(maps, patch) > 0.9


def test_select_score_uses_validation_data_only():
    rng = np.random.default_rng(0)
    normal = {"good": rng.normal(0, 1, 50), "bad": rng.normal(0, 1, 50), "tie": np.zeros(50)}
    synthetic = {"good": rng.normal(3, 1, 20), "bad": rng.normal(0, 1, 20), "tie": np.zeros(20)}
    choice = select_score(normal, synthetic)
    assert choice["best"] == "good" and choice["num_normal"] == 50 and choice["num_synthetic"] == 20
    assert choice["validation_auroc"]["tie"] == 0.5 and choice["validation_auroc"]["good"] > 0.95
    assert select_score(normal, synthetic, names=["tie", "bad"])["best"] in ("tie", "bad")
    with pytest.raises(ValueError, match="missing"):
        select_score(normal, {"good": synthetic["good"]}, names=["good", "bad"])


def test_wrong_keyword_names_the_existing_one(vqvae):
    config = make_tiny_prior_config(grid_size=(4, 4), num_classes=3, id2label={0: "cat", 1: "automobile", 2: "dog"})
    conditional = VQVAEPriorForCausalLM(config).eval()
    with pytest.raises(TypeError, match=r"`prior_class_label` \(did you mean `class_label`\?\)"):
        VQVAEAnomalyScorer(vqvae, conditional, prior_class_label="automobile")
    scorer = VQVAEAnomalyScorer(vqvae, conditional, class_label="automobile")
    assert scorer.class_label == 1
    with pytest.raises(ValueError, match=r"Unknown class name 'truck' in `class_label`.*'automobile'"):
        VQVAEAnomalyScorer(vqvae, conditional, class_label="truck")
    detect = pipeline("vqvae-anomaly", model=vqvae, prior=conditional, prior_class_label="automobile")
    with pytest.raises(TypeError, match=r"`class_label` \(did you mean `prior_class_label`\?\)"):
        detect(Image.new("RGB", (16, 16)), class_label="automobile")


def test_restoration_distribution_of_both_paths(pattern_scorer, monkeypatch):
    """The transformer's one-pass distribution equals `code_log_likelihood` of the K grids that differ at one code,
    which is the path any other prior (only `code_log_likelihood`) takes."""
    import hf_vqvae.anomaly as anomaly_module

    scorer, prior = pattern_scorer, pattern_scorer.prior
    grids = scorer.score(paste_patch(pattern_images(2, seed=3)), return_maps=False).codes.flatten(1)  # (2, 16)
    position = 6
    fast = scorer._conditional_log_probs(grids, position, 4, 4)
    variants = grids.repeat_interleave(16, 0)
    variants[:, position] = torch.arange(16).repeat(2)
    expected = prior.code_log_likelihood(variants.view(-1, 4, 4)).view(2, 16, 4, 4)[:, :, position // 4, position % 4]
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(anomaly_module, "VQVAEPriorForCausalLM", type("OtherPrior", (), {}))
    torch.testing.assert_close(scorer._conditional_log_probs(grids, position, 4, 4), fast, rtol=1e-4, atol=1e-5)


def test_bad_arguments_of_the_new_scores(vqvae, prior):
    with pytest.raises(ValueError, match=r"`restoration_threshold` is a probability in \(0, 1\)"):
        VQVAEAnomalyScorer(vqvae, prior, restoration_threshold=1.5)
    with pytest.raises(ValueError, match="`restoration_quantile`"):
        VQVAEAnomalyScorer(vqvae, prior, restoration_quantile=0)
    with pytest.raises(TypeError, match="`background_prior` must be a prior"):
        VQVAEAnomalyScorer(vqvae, prior, background_prior="prior")
    with pytest.raises(ValueError, match="`background_prior` models 32 codes"):
        VQVAEAnomalyScorer(
            vqvae, prior, background_prior=VQVAEPriorForCausalLM(make_tiny_prior_config(codebook_size=32))
        )
    with pytest.raises(TypeError, match="`pixel_log_likelihood` must be a function"):
        VQVAEAnomalyScorer(vqvae, pixel_log_likelihood=1.0)
    with pytest.raises(ValueError, match="`reconstruction_log_scale` must be a finite float"):
        VQVAEAnomalyScorer(vqvae, reconstruction_log_scale=float("nan"))
    with pytest.raises(TypeError, match=r"`restoration_treshold` \(did you mean `restoration_threshold`\?\)"):
        VQVAEAnomalyScorer(vqvae, prior, restoration_treshold=0.01)


def test_localization_benchmark_and_validation_choice(pattern_scorer):
    from hf_vqvae.anomaly import evaluate_localization, validation_scores

    normal = pattern_images(8, seed=7)
    defected, masks, _ = make_synthetic_defects(normal, seed=0, source_pixel_values=paste_patch(normal))
    pca = PCABaseline(n_components=4).fit(pattern_images(32, seed=5))
    results = evaluate_localization(pattern_scorer, defected, masks, pca=pca)
    assert set(results) == {"reconstruction_error", "prior_nll", "restoration", "pca_residual", "maps"}
    for name, maps in results["maps"].items():
        assert maps.shape == (8, 16, 16)
        assert results[name] == localization_metrics(maps, masks)
    normal_scores, synthetic_scores = validation_scores(pattern_scorer, normal, seed=1)
    assert set(normal_scores) == set(synthetic_scores) and "complexity_corrected_nll" in normal_scores
    assert all(len(values) == 8 for values in (*normal_scores.values(), *synthetic_scores.values()))
    choice = select_score(normal_scores, synthetic_scores)
    assert choice["validation_auroc"][choice["best"]] == max(choice["validation_auroc"].values())


# ---------------------------------------------------------------------------------------------------------- latent kNN


@pytest.fixture(scope="module")
def knn_scorer(pattern_scorer):
    """The pattern models, with their 32 training images as the memory bank, fitted on 32 unseen ones."""
    scorer = VQVAEAnomalyScorer(pattern_scorer.vqvae, pattern_scorer.prior)
    return scorer.fit(pattern_images(32, seed=5), memory_bank=pattern_images(32))


def test_latent_knn_flags_a_pasted_patch_and_its_map_peaks_inside(knn_scorer):
    clean = pattern_images(6, seed=1)
    output, clean_output = knn_scorer.score(paste_patch(clean)), knn_scorer.score(clean)
    assert (output.latent_knn > clean_output.latent_knn).all()
    assert (output.latent_knn > 3).all() and clean_output.latent_knn.abs().max() < 6  # standardised: clean ~ N(0, L)
    assert output.latent_knn_map.shape == (6, 16, 16)
    # The map rises around the patch: within the codes whose receptive field it reaches (the 3x3 codes around code
    # (1, 2)) more than anywhere else. The tiny encoder spreads it too widely for a peak inside the patch itself.
    rise = (output.latent_knn_map - clean_output.latent_knn_map).mean(0)
    around = torch.zeros(16, 16, dtype=torch.bool)
    around[0:12, 4:16] = True
    assert rise[around].mean() > 5 * rise[~around].mean() > 0


def test_latent_knn_is_the_standardised_sum_of_nearest_distances(knn_scorer):
    images = pattern_images(5, seed=3)
    output = knn_scorer.score(images)
    vqvae = knn_scorer.vqvae
    with torch.no_grad():
        latents, bank = vqvae.encode(images).latents, vqvae.encode(pattern_images(32)).latents
    statistics = knn_scorer.statistics["latent_knn_level_statistics"]
    expected = torch.zeros(5)
    for index, level in enumerate(knn_scorer.latent_knn_levels):  # (None, 1, 2)
        if level is None:
            features, bank_features = latents.flatten(1), bank.flatten(1)
        else:
            pool = torch.nn.functional.adaptive_avg_pool2d
            features, bank_features = [
                torch.cat([pool(z, level).flatten(1), (pool(z * z, level) - pool(z, level) ** 2).sqrt().flatten(1)], 1)
                for z in (latents, bank)
            ]
        squared = (features[:, None] - bank_features[None]).pow(2).sum(-1)  # exact, (5, 32)
        distances = squared.sqrt().topk(5, largest=False).values.mean(1)
        expected += (distances - statistics["mean"][index]) / statistics["std"][index]
        if level is None:  # the map sums to the mean squared distance to the 5 nearest grids
            nearest = squared.topk(5, largest=False).values.mean(1)
            torch.testing.assert_close(output.latent_knn_map.flatten(1).sum(1), nearest, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(output.latent_knn, expected, rtol=1e-3, atol=1e-3)
    assert "latent_knn" in knn_scorer.available_scores and "latent_knn" in knn_scorer.statistics
    without_bank = VQVAEAnomalyScorer(vqvae).fit(pattern_images(8, seed=5))
    assert "latent_knn" not in without_bank.available_scores and without_bank.score(images).latent_knn is None


def test_latent_knn_bad_arguments(pattern_scorer):
    vqvae = pattern_scorer.vqvae
    with pytest.raises(ValueError, match="hold some normal images out of the bank"):
        VQVAEAnomalyScorer(vqvae).fit(pattern_images(32)[:8], memory_bank=pattern_images(32))
    with pytest.raises(ValueError, match="`memory_bank` must be a float tensor"):
        VQVAEAnomalyScorer(vqvae).fit(pattern_images(8), memory_bank="images/")
    for levels in ((), (None, None), (0,), ("grid",), None):
        with pytest.raises(ValueError, match="`latent_knn_levels` must be"):
            VQVAEAnomalyScorer(vqvae, latent_knn_levels=levels)
    with pytest.raises(ValueError, match="`latent_knn_neighbors` must be a positive integer"):
        VQVAEAnomalyScorer(vqvae, latent_knn_neighbors=0)
    with pytest.raises(SystemExit):
        anomaly_script.parse_args(["--fit", "--latent_knn_levels", "grid,0", "--output_dir", "x"])


def test_synthetic_outliers():
    from hf_vqvae.anomaly import OUTLIER_KINDS, make_synthetic_outliers

    images = pattern_images(10, seed=2)
    outliers, kinds = make_synthetic_outliers(images, seed=3)
    assert outliers.shape == images.shape and kinds == [*OUTLIER_KINDS, *OUTLIER_KINDS]
    torch.testing.assert_close(outliers, make_synthetic_outliers(images, seed=3)[0], rtol=0, atol=0)
    assert all(not torch.equal(outlier, image) for outlier, image in zip(outliers, images))  # every one changed
    torch.testing.assert_close(outliers[1], images[1].flip(1))  # upside down
    torch.testing.assert_close(outliers[2].flatten().sort().values, images[2].flatten().sort().values)  # same pixels
    gray, _ = make_synthetic_outliers(images[:4, :1], kinds=("channels",))
    torch.testing.assert_close(gray, -images[:4, :1])
    with pytest.raises(ValueError, match="subset of"):
        make_synthetic_outliers(images, kinds=("rotate", "zoom"))
    with pytest.raises(ValueError, match="batch >= 2"):
        make_synthetic_outliers(images[:1])


def test_validation_choice_with_whole_image_outliers(knn_scorer):
    from hf_vqvae.anomaly import validation_scores

    normal = pattern_images(18, seed=7)
    normal_scores, synthetic_scores = validation_scores(knn_scorer, normal, seed=1)
    assert "latent_knn" in normal_scores and all(len(v) == 18 for v in synthetic_scores.values())
    outliers_only = validation_scores(knn_scorer, normal, seed=1, kinds=("rotate", "flip"))[1]
    assert not np.allclose(outliers_only["latent_knn"], synthetic_scores["latent_knn"])
    choice = select_score(normal_scores, synthetic_scores)
    assert choice["validation_auroc"]["latent_knn"] > 0.75
    with pytest.raises(ValueError, match="non-empty subset"):
        validation_scores(knn_scorer, normal, kinds=("patch", "zoom"))
    # Five images for nine kinds: the one image of the outliers' group is transformed too (it borrows a partner).
    few_normal, few_synthetic = validation_scores(knn_scorer, normal[:5], seed=1)
    assert (few_normal["reconstruction_error"] != few_synthetic["reconstruction_error"]).all()


def test_choose_for_data_set_averages_validation_over_classes():
    def run(validation, test):
        return {
            "selection": {"validation_auroc": validation},
            "metrics": {name: {"auroc": value} for name, value in test.items()},
        }

    runs = {
        "class-0": run({"prior_nll": 0.9, "latent_knn": 0.6}, {"prior_nll": 0.5, "latent_knn": 0.8}),
        "class-1": run({"prior_nll": 0.5, "latent_knn": 0.7}, {"prior_nll": 0.7, "latent_knn": 0.9}),
    }
    chosen = anomaly_script.choose_for_data_set(runs)  # validation means 0.7 and 0.65: the prior's NLL
    assert chosen["score"] == "prior_nll" and chosen["test_auroc"] == pytest.approx(0.6)
    assert chosen["mean_validation_auroc"] == pytest.approx({"prior_nll": 0.7, "latent_knn": 0.65})
    assert anomaly_script.choose_for_data_set({"class-0": {"metrics": {}}}) is None
    data = ["--train_data_files", "a.parquet", "--test_data_files", "b.parquet"]
    parsed = anomaly_script.parse_args(["--fit", "--output_dir", "x", *data, "--validation_anomalies", "defects"])
    assert anomaly_script.VALIDATION_ANOMALIES[parsed.validation_anomalies] == DEFECT_KINDS
    with pytest.raises(SystemExit):
        anomaly_script.parse_args(["--fit", "--output_dir", "x", *data, "--validation_anomalies", "labels"])


@pytest.mark.parametrize("pixel_decoder", [None, "pixelcnn"])
def test_nll_bits_uses_a_logistic_mixture_decoders_own_likelihood(pixel_decoder):
    torch.manual_seed(0)
    config = make_tiny_config(
        reconstruction_loss="discretized_logistic_mixture",
        num_logistic_mixtures=2,
        pixel_decoder=pixel_decoder,
        pixel_decoder_hidden_channels=8,
        pixel_decoder_num_layers=1,
    )
    vqvae = VQVAEModel(config).eval()
    images = (((smooth_images(4, seed=2) + 1) * 127.5).round() / 127.5 - 1).float()  # 8-bit levels
    scorer = VQVAEAnomalyScorer(vqvae).fit(images)
    assert "reconstruction_log_scale" not in scorer.statistics  # nothing to fit: the decoder has its likelihood
    output = scorer.score(images, return_maps=False)
    with torch.no_grad():
        model_output = vqvae(images)
    # The model's own bits/dim (teacher-forced for the PixelCNN), plus log2 K bits per code without a prior.
    codes_bits = model_output.codes[0].numel() * math.log2(config.codebook_size)
    expected = model_output.bits_per_dim * images[0].numel() + codes_bits
    torch.testing.assert_close(output.nll_bits, expected, rtol=1e-4, atol=1e-2)
