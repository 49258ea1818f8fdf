"""Tests of `hf_vqvae.anomaly` (scores, maps, baselines, metrics), the "vqvae-anomaly" pipeline and scripts/anomaly.py.

The inliers are smooth, low-amplitude sinusoids; the obvious outliers are uniform noise in [-1, 1]. A tiny VQ-VAE and
a tiny prior are fitted on the inliers for a few dozen steps (well under a second each), once per module.
"""

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
    render_anomaly_heatmap,
)


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
    assert set(result) == {"reconstruction_error", "prior_nll", "combined_score"}
    assert result["prior_nll"] is None and result["combined_score"] is None
    pixel_values = VQVAEImageProcessor.from_model_config(vqvae.config)(images, return_tensors="pt")["pixel_values"]
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
    assert set(statistics) == {"num_images", "reconstruction_error", "prior_nll"}
    inlier, outlier = detect(images, batch_size=2)
    assert outlier["combined_score"] > inlier["combined_score"]
    with pytest.raises(ValueError, match="`heatmap` must be one of"):
        detect(images[0], heatmap="pixels")
    with pytest.raises(ValueError, match="needs a prior"):
        pipeline("vqvae-anomaly", model=str(saved_models / "vqvae"))(images[0], heatmap="prior_nll")
    with pytest.raises(TypeError, match="needs a `VQVAEModel`"):
        pipeline("vqvae-anomaly", model=prior)


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
    ]
    anomaly_script.main(anomaly_script.parse_args(script_args(parquet_data, output_dir, fit)))

    results = json.loads((output_dir / "results.json").read_text())
    assert list(results["runs"]) == ["class-0", "class-1"]
    score_types = {"reconstruction_error", "prior_nll", "combined_score", "pca", "nearest_neighbor"}
    for name, run in results["runs"].items():
        assert set(run["metrics"]) == score_types
        assert run["num_normal_train"] == 24 and run["num_test_anomalous"] == 8
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
    assert "| normal | VQ-VAE reconstruction error | prior NLL | combined | PCA (4) | nearest neighbour |" in report
    assert "| 0 (smooth) |" in report and "| **mean** |" in report and "## AUPRC (%)" in report

    # Scoring the saved models again (`--model` with `{class}`) gives the same numbers: scores are deterministic.
    rescored = anomaly_script.main(
        anomaly_script.parse_args(
            script_args(
                parquet_data,
                tmp_path / "rescored",
                [
                    "--model",
                    str(output_dir / "class-{class}" / "vqvae"),
                    "--prior",
                    str(output_dir / "class-{class}" / "prior"),
                    "--baselines",
                ],
            )
        )
    )
    for name in ("class-0", "class-1"):
        for score in ("reconstruction_error", "prior_nll"):
            assert rescored["runs"][name]["metrics"][score] == results["runs"][name]["metrics"][score]


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
