"""Tests of VQVAEPixelCNNPriorConfig and VQVAEPixelCNNPriorModel (the gated PixelCNN prior), on tiny configs."""

import functools
import importlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, make_tiny_config, make_tiny_prior_config
from test_modeling_vqvae import CommonModelTests
from transformers import AutoModel, pipeline

from hf_vqvae import (
    VQVAEAnomalyScorer,
    VQVAEImageProcessor,
    VQVAEModel,
    VQVAEPixelCNNPriorConfig,
    VQVAEPixelCNNPriorModel,
    VQVAEPriorForCausalLM,
)
from hf_vqvae.pairing import save_vqvae_reference
from hf_vqvae.pipelines import VQVAEGenerationPipeline, load_prior


CLASS_NAMES = ["ant", "bee", "cat"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models spend their time synchronising threads on a busy machine; one thread is much faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(**kwargs) -> VQVAEPixelCNNPriorConfig:
    """K=16 codes on a (3, 4) grid, 3 named classes, 8 channels, 2 layers: the receptive field covers the grid."""
    settings = {
        "codebook_size": 16,
        "grid_size": (3, 4),
        "num_classes": 3,
        "hidden_channels": 8,
        "num_layers": 2,
        "head_channels": 16,
        "id2label": dict(enumerate(CLASS_NAMES)),
        "label2id": {name: i for i, name in enumerate(CLASS_NAMES)},
    }
    settings.update(kwargs)
    if settings["num_classes"] == 0:
        settings.pop("id2label"), settings.pop("label2id")
    return VQVAEPixelCNNPriorConfig(**settings)


def make_model(**kwargs) -> VQVAEPixelCNNPriorModel:
    torch.manual_seed(0)
    return VQVAEPixelCNNPriorModel(make_config(**kwargs)).eval()


@functools.cache
def shared_model() -> VQVAEPixelCNNPriorModel:
    """One tiny model for the tests that only read it."""
    return make_model()


class VQVAEPixelCNNPriorModelTester:
    batch_size = 3
    main_output = "logits"

    def __init__(self, **config_kwargs):
        self.config_kwargs = config_kwargs

    def get_config(self) -> VQVAEPixelCNNPriorConfig:
        return make_config(**self.config_kwargs)

    def get_dummy_inputs(self, seed: int = 0) -> dict:
        config = self.get_config()
        generator = torch.Generator().manual_seed(seed)
        codes = torch.randint(0, config.codebook_size, (self.batch_size, *config.grid_size), generator=generator)
        class_labels = torch.arange(self.batch_size) % config.num_classes if config.num_classes else None
        return {"codes": codes, "class_labels": class_labels, "labels": codes}

    def expected_shapes(self) -> dict:
        config = self.get_config()
        return {"logits": (self.batch_size, *config.grid_size, config.codebook_size), "loss": ()}

    def expected_dtypes(self) -> dict:
        return {"logits": torch.float32}


class TestVQVAEPixelCNNPrior(CommonModelTests):
    model_class = VQVAEPixelCNNPriorModel
    auto_class = AutoModel
    tester = VQVAEPixelCNNPriorModelTester()


class TestVQVAEPixelCNNPriorUnconditional(CommonModelTests):
    model_class = VQVAEPixelCNNPriorModel
    auto_class = AutoModel
    tester = VQVAEPixelCNNPriorModelTester(
        num_classes=0, kernel_size=5, use_position_bias=False, hidden_dropout_prob=0.1
    )


# ---------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"codebook_size": 0}, "codebook_size"),
        ({"hidden_channels": 0}, "hidden_channels"),
        ({"num_layers": 0}, "num_layers"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"kernel_size": 1}, "kernel_size"),
        ({"grid_size": (3,)}, "grid_size"),
        ({"grid_size": (3, 0)}, "grid_size"),
        ({"num_classes": -1}, "num_classes"),
        ({"class_dropout_prob": 1.0}, "class_dropout_prob"),
        ({"hidden_dropout_prob": -0.1}, "hidden_dropout_prob"),
        ({"use_position_bias": 1}, "use_position_bias"),
        ({"initializer_range": 0}, "initializer_range"),
    ],
)
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_receptive_field_formula():
    config = make_config(num_layers=3, kernel_size=5, grid_size=(8, 8))  # reach L * p = 6
    assert config.receptive_field == {
        "rows_above": 7,
        "columns_left_same_row": 7,
        "columns_left_above": 6,
        "columns_right_above": 6,
    }
    assert not config.covers_grid  # (i, 0) cannot see 7 columns to its right on the rows above
    assert make_config(num_layers=7, grid_size=(8, 8)).covers_grid
    assert not make_config(num_layers=6, grid_size=(8, 8)).covers_grid
    assert config.num_codes == 64


# ---------------------------------------------------------------------------------------------------------- causality


def dependency_matrix(model, class_labels=None) -> torch.Tensor:
    """`depends[s, t]`: changing the code at position s changes the logits at position t (raster order)."""
    config = model.config
    h, w = config.grid_size
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, config.codebook_size, (1, h, w), generator=generator)
    with torch.no_grad():
        base = model(codes, class_labels=class_labels).logits.flatten(1, 2)  # (1, h*w, K)
        depends = torch.zeros(h * w, h * w, dtype=torch.bool)
        for s in range(h * w):
            for shift in (1, 5):  # two other codes, so that no change is missed by chance
                changed = codes.clone().view(1, -1)
                changed[0, s] = (changed[0, s] + shift) % config.codebook_size
                logits = model(changed.view(1, h, w), class_labels=class_labels).logits.flatten(1, 2)
                depends[s] |= (logits - base).abs().amax(-1)[0] > 0
    return depends


def documented_field(config) -> torch.Tensor:
    """The dependencies the config docstring promises: earlier positions within `receptive_field`."""
    h, w = config.grid_size
    field = config.receptive_field
    expected = torch.zeros(h * w, h * w, dtype=torch.bool)
    for t in range(h * w):
        i, j = divmod(t, w)
        for s in range(t):
            si, sj = divmod(s, w)
            if si == i:
                expected[s, t] = j - sj <= field["columns_left_same_row"]
            else:
                expected[s, t] = (
                    i - si <= field["rows_above"]
                    and j - sj <= field["columns_left_above"]
                    and sj - j <= field["columns_right_above"]
                )
    return expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"grid_size": (5, 6), "num_layers": 1},  # a field smaller than the grid: its edges are checked
        {"grid_size": (6, 7), "num_layers": 2},
        {"grid_size": (5, 7), "num_layers": 1, "kernel_size": 5},
        {"grid_size": (3, 4), "num_layers": 3, "use_position_bias": False},  # covers the grid
    ],
)
def test_causality_and_receptive_field_exhaustively(kwargs):
    """Changing a code never changes the logits at or before its position, and changes exactly the documented ones."""
    model = make_model(**kwargs).double()
    depends = dependency_matrix(model, class_labels=1)
    assert not torch.tril(depends).any(), "a code influences the logits at or before its own position"
    assert torch.equal(depends, documented_field(model.config))
    if model.config.covers_grid:
        assert torch.equal(depends, torch.ones_like(depends).triu(1))


def test_loss_matches_cross_entropy_and_ignores_minus_100():
    model = shared_model()
    codes = torch.randint(0, 16, (4, 3, 4), generator=torch.Generator().manual_seed(1))
    labels = codes.clone()
    labels[:, 0, :2] = -100
    output = model(codes, class_labels=[0, 1, 2, "cat"], labels=labels)
    kept = labels != -100
    expected = F.cross_entropy(output.logits[kept], codes[kept])
    torch.testing.assert_close(output.loss, expected)


def test_code_log_likelihood_is_the_log_softmax_of_the_logits():
    model = shared_model()
    codes = torch.randint(0, 16, (2, 3, 4), generator=torch.Generator().manual_seed(2))
    log_likelihood = model.code_log_likelihood(codes, class_labels=[2, 0])
    assert log_likelihood.shape == (2, 3, 4) and log_likelihood.dtype == torch.float32
    with torch.no_grad():
        logits = model(codes, class_labels=[2, 0]).logits
    expected = logits.log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1)
    torch.testing.assert_close(log_likelihood, expected)
    assert (log_likelihood < 0).all()


def test_class_dropout_only_in_training():
    model = make_model(class_dropout_prob=0.5)
    codes = torch.randint(0, 16, (1, 3, 4), generator=torch.Generator().manual_seed(3)).expand(64, 3, 4)
    with torch.no_grad():
        conditional = model(codes[:1], class_labels=1).logits
        unconditional = model(codes[:1], class_labels=None).logits
        # Eval: no dropout (equal up to rounding: a batch of 64 sums in another order than a batch of 1).
        torch.testing.assert_close(model(codes, class_labels=1).logits, conditional.expand(64, -1, -1, -1))
        model.train()
        torch.manual_seed(0)
        logits = model(codes, class_labels=1).logits
    dropped = [torch.allclose(row, unconditional[0]) for row in logits]
    kept = [torch.allclose(row, conditional[0]) for row in logits]
    assert all(d != k for d, k in zip(dropped, kept)) and 10 < sum(dropped) < 54


def test_class_names_and_ids_agree():
    model = shared_model()
    codes = torch.randint(0, 16, (3, 3, 4), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        by_id = model(codes, class_labels=torch.tensor([0, 1, 2])).logits
        by_name = model(codes, class_labels=["ant", "bee", "cat"]).logits
        one_for_all = model(codes, class_labels="bee").logits
        assert torch.equal(model(codes, class_labels=torch.tensor(1)).logits, one_for_all)
        assert torch.equal(by_id, by_name)
        assert torch.equal(one_for_all, model(codes, class_labels=[1, 1, 1]).logits)
    assert torch.equal(
        model.generate_codes(class_labels=["cat", "ant"], seed=0), model.generate_codes(class_labels=[2, 0], seed=0)
    )
    with pytest.raises(ValueError, match="Unknown class name 'dog'"):
        model.generate_codes(class_labels=["dog"])
    with pytest.raises(ValueError, match="Unknown class name"):
        model.code_log_likelihood(codes, class_labels="dog")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m(torch.randint(0, 16, (2, 3, 5))), r"shape \(batch, 3, 4\)"),
        (lambda m: m(torch.randint(0, 16, (3, 4))), r"shape \(batch, 3, 4\)"),
        (lambda m: m(torch.rand(2, 3, 4)), "integer tensor"),
        (lambda m: m(torch.full((2, 3, 4), 16)), r"codes in \[0, 16\)"),
        (lambda m: m(torch.full((2, 3, 4), -1)), r"codes in \[0, 16\)"),
        (lambda m: m(torch.zeros(2, 3, 4, dtype=torch.long), labels=torch.full((2, 3, 4), 17)), "`labels`"),
        (lambda m: m(torch.zeros(2, 3, 4, dtype=torch.long), labels=torch.zeros(3, 3, 4, dtype=torch.long)), "grids"),
        (lambda m: m(torch.zeros(2, 3, 4, dtype=torch.long), class_labels=3), r"outside \[0, 3\)"),
        (lambda m: m(torch.zeros(2, 3, 4, dtype=torch.long), class_labels=[0, 1, 2]), "3 `class_labels` for a batch"),
        (lambda m: m.code_log_likelihood(torch.full((1, 3, 4), 99)), r"codes in \[0, 16\)"),
        (
            lambda m: m(torch.zeros(2, 3, 4, dtype=torch.long), class_labels=torch.zeros(2, 1, dtype=torch.long)),
            "shape",
        ),
        (lambda m: m.generate_codes(num_samples=0), "num_samples"),
        (lambda m: m.generate_codes(temperature=0), "temperature"),
        (lambda m: m.generate_codes(top_k=-1), "top_k"),
        (lambda m: m.generate_codes(top_p=0), "top_p"),
        (lambda m: m.generate_codes(guidance_scale=2.0), "needs `class_labels`"),
        (lambda m: m.generate_codes(num_samples=3, class_labels=[0, 1]), "batch sizes disagree"),
        (lambda m: m.generate_codes(prompt_codes=torch.zeros(1, 13, dtype=torch.long)), "n <= 12"),
        (lambda m: m.generate_codes(prompt_codes=torch.full((1, 2), 16)), r"codes in \[0, 16\)"),
        (lambda m: m.generate_codes(prompt_codes=torch.zeros(2, 3, 4, dtype=torch.long)), "num_samples, n"),
    ],
)
def test_bad_inputs_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(shared_model())


def test_unconditional_prior_refuses_class_labels():
    model = make_model(num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.zeros(1, 3, 4, dtype=torch.long), class_labels=0)
    with pytest.raises(ValueError, match="unconditional"):
        model.generate_codes(class_labels=[0])


# ---------------------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_labels": [0, 1, 2, 1]},
        {"class_labels": ["cat", "ant"], "guidance_scale": 3.0, "temperature": 0.7},
        {"num_samples": 3, "top_k": 4, "top_p": 0.8},
        {"class_labels": [2, 2], "do_sample": False, "guidance_scale": 2.0},
        {"prompt_codes": torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]]), "class_labels": 1},
        {"prompt_codes": torch.arange(12).view(1, 12)},  # nothing left to sample
    ],
)
@pytest.mark.parametrize("model_kwargs", [{}, {"num_classes": 0, "kernel_size": 5, "grid_size": (4, 3)}])
def test_cached_sampler_gives_the_naive_samplers_codes(kwargs, model_kwargs):
    model = make_model(**model_kwargs)
    if model.config.num_classes == 0:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("class_labels", "guidance_scale")}
    for seed in range(3):
        cached = model.generate_codes(seed=seed, **kwargs)
        naive = model.generate_codes(seed=seed, use_cache=False, **kwargs)
        assert torch.equal(cached, naive), seed
        assert cached.shape[1:] == model.config.grid_size and cached.dtype == torch.long
        assert 0 <= int(cached.min()) and int(cached.max()) < model.config.codebook_size
        if "prompt_codes" in kwargs:
            prompt = kwargs["prompt_codes"]
            assert torch.equal(cached.flatten(1)[:, : prompt.shape[1]], prompt.expand(cached.shape[0], -1))


@pytest.mark.parametrize(
    "model_kwargs",
    [
        {},
        {"num_classes": 0, "kernel_size": 5, "use_position_bias": False, "grid_size": (4, 3)},
        {"num_layers": 1},  # the first layer is the last: no residual projection
        {"num_layers": 3, "grid_size": (1, 5)},  # one row: no vertical stack reaches any position
        {"grid_size": (4, 1), "hidden_dropout_prob": 0.5},  # one column; dropout off while sampling
    ],
)
@pytest.mark.parametrize("guided", [False, True])
def test_cached_sampler_computes_the_forward_logits(model_kwargs, guided):
    """
    Teacher-forced, the cached sampler's logits at every position equal the full forward pass's (up to float
    rounding): the check behind "same codes", independent of which code a draw picks.
    """
    model = make_model(**model_kwargs)
    if guided and model.config.num_classes == 0:
        pytest.skip("guidance needs classes")
    h, w = model.config.grid_size
    generator = torch.Generator().manual_seed(0)
    grids = torch.randint(0, model.config.codebook_size, (2, h, w), generator=generator)
    class_ids = model._class_ids([2, 0] if model.config.num_classes else None, 2)
    if guided:
        class_ids = torch.cat([class_ids, torch.full_like(class_ids, model.config.num_classes)])  # (2B,)
    for start in (0, min(w + 1, h * w - 1)):  # from scratch, and after a prompt past the first row
        seen = []

        def pick(logits, seen=seen, start=start):  # records the logits, picks the grid's own code
            seen.append(logits.clone())
            return grids.flatten(1)[:, start + len(seen) - 1]

        codes = torch.zeros_like(grids)
        codes.flatten(1)[:, :start] = grids.flatten(1)[:, :start]
        with torch.no_grad():
            model._sample_cached(codes, class_ids, start, pick)
            # The whole grid at once, as `forward` computes it (which takes no "no class" id: the unguided half).
            expected = model._logits(grids.repeat(2 if guided else 1, 1, 1), class_ids).permute(0, 2, 3, 1)
        assert torch.equal(codes, grids)
        cached = torch.stack(seen, dim=1)  # (B or 2B, h * w - start, K)
        torch.testing.assert_close(cached, expected.flatten(1, 2)[:, start:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_samples": 1},
        {"class_labels": ["bee"], "guidance_scale": 2.0},
        {"class_labels": [0, 2, 1], "guidance_scale": 4.0, "top_p": 0.9},
        # A prompt ending mid-row and one ending at a row's end, class-conditional, guided.
        {"prompt_codes": torch.tensor([[3, 1, 4, 1, 5, 9]]), "class_labels": "cat", "guidance_scale": 2.0},
        {"prompt_codes": torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]] * 2), "class_labels": [0, 1]},
    ],
)
@pytest.mark.parametrize("model_kwargs", [{"kernel_size": 5, "num_layers": 3}, {"num_layers": 1}])
def test_cached_sampler_gives_the_naive_samplers_codes_on_other_paths(kwargs, model_kwargs):
    model = make_model(**model_kwargs)
    for seed in range(3):
        cached = model.generate_codes(seed=seed, **kwargs)
        assert torch.equal(cached, model.generate_codes(seed=seed, use_cache=False, **kwargs)), seed
        if "prompt_codes" in kwargs:
            prompt = kwargs["prompt_codes"]
            assert torch.equal(cached.flatten(1)[:, : prompt.shape[1]], prompt.expand(cached.shape[0], -1))


def test_cached_sampler_follows_changed_weights():
    """The cached sampler keeps its reordered kernels between calls: any change of the weights must reach it."""
    model = make_model()
    before = model.generate_codes(class_labels=[0, 1, 2], seed=0)
    changed = make_model()
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(torch.randn_like(parameter))
    previous = before
    for change in (
        lambda: model.load_state_dict(changed.state_dict()),  # in place
        lambda: model.head[3].weight.data.mul_(3),  # in place, behind autograd's back
        lambda: model.load_state_dict(make_model().state_dict(), assign=True),  # new tensors: the first weights
    ):
        change()
        cached = model.generate_codes(class_labels=[0, 1, 2], seed=0)
        assert torch.equal(cached, model.generate_codes(class_labels=[0, 1, 2], seed=0, use_cache=False))
        assert not torch.equal(cached, previous)
        previous = cached
    assert torch.equal(cached, before)


def test_drawing_every_uniform_at_once_gives_the_per_position_stream():
    """The samplers draw all their uniforms in one call: the same numbers as one draw of the batch per position."""
    for batch in (1, 3, 64):
        generator = torch.Generator().manual_seed(0)
        one_by_one = torch.stack([torch.rand(batch, generator=generator) for _ in range(64)])
        assert torch.equal(one_by_one, torch.rand(64, batch, generator=torch.Generator().manual_seed(0)))


def test_greedy_sampling_follows_the_forward_logits():
    """The cached sampler's greedy grid is the argmax of the full forward pass at every position."""
    model = shared_model()
    codes = model.generate_codes(class_labels=[0, 2], do_sample=False)
    with torch.no_grad():
        logits = model(codes, class_labels=[0, 2]).logits
    assert torch.equal(logits.argmax(-1), codes)


def test_guidance_matches_a_hand_written_loop():
    model = shared_model()
    scale, h, w = 2.5, 3, 4
    codes = torch.zeros(2, h, w, dtype=torch.long)
    with torch.no_grad():
        for t in range(h * w):
            i, j = divmod(t, w)
            conditional = model(codes, class_labels=[1, 2]).logits[:, i, j].log_softmax(-1)
            unconditional = model(codes).logits[:, i, j].log_softmax(-1)
            codes[:, i, j] = (unconditional + scale * (conditional - unconditional)).argmax(-1)
    guided = model.generate_codes(class_labels=[1, 2], guidance_scale=scale, do_sample=False)
    assert torch.equal(guided, codes)
    # Guidance changes the samples (a scale of 1 does not).
    plain = model.generate_codes(class_labels=[1, 2] * 4, seed=0)
    assert torch.equal(plain, model.generate_codes(class_labels=[1, 2] * 4, guidance_scale=1.0, seed=0))
    assert not torch.equal(plain, model.generate_codes(class_labels=[1, 2] * 4, guidance_scale=4.0, seed=0))


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone():
    model = shared_model()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = model.generate_codes(num_samples=4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, model.generate_codes(num_samples=4, seed=7))
    assert not torch.equal(first, model.generate_codes(num_samples=4, seed=8))
    torch.manual_seed(5)
    unseeded = model.generate_codes(num_samples=4)
    torch.manual_seed(5)
    assert torch.equal(unseeded, model.generate_codes(num_samples=4, use_cache=False))


def test_sampling_from_a_trained_distribution_reproduces_it():
    """A prior trained on one fixed grid per class samples exactly that grid (the sampler reads the right logits)."""
    torch.manual_seed(0)
    model = VQVAEPixelCNNPriorModel(make_config(class_dropout_prob=0.0, grid_size=(2, 3))).train()
    grids = torch.stack([torch.randperm(16)[:6].view(2, 3) for _ in range(3)])  # (3, 2, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(150):
        loss = model(grids, class_labels=[0, 1, 2], labels=grids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss < 0.05
    model.eval()
    samples = model.generate_codes(class_labels=[2, 0, 1], seed=0)
    assert torch.equal(samples, grids[[2, 0, 1]])
    assert torch.equal(samples, model.generate_codes(class_labels=[2, 0, 1], seed=0, use_cache=False))


# ---------------------------------------------------------------------------------------------------------- saving


def test_save_load_keeps_the_samples_and_the_class_names(tmp_path):
    model = shared_model()
    model.save_pretrained(tmp_path)
    loaded = VQVAEPixelCNNPriorModel.from_pretrained(tmp_path).eval()
    assert loaded.config.id2label == {0: "ant", 1: "bee", 2: "cat"}
    assert torch.equal(
        loaded.generate_codes(class_labels=["bee", 2], seed=3), model.generate_codes(class_labels=[1, 2], seed=3)
    )
    assert type(load_prior(tmp_path)) is VQVAEPixelCNNPriorModel


def test_trust_remote_code_loads_the_saved_code(tmp_path, monkeypatch):
    """
    `save_pretrained` writes the code and `auto_map`; the saved copy (what `trust_remote_code` imports where hf_vqvae
    is not installed; with it installed, transformers prefers the registered classes) loads and samples the same.
    """
    import transformers.dynamic_module_utils as dynamic

    model = shared_model()
    model.save_pretrained(tmp_path / "prior")
    config = json.loads((tmp_path / "prior" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pixelcnn_prior.VQVAEPixelCNNPriorConfig",
        "AutoModel": "modeling_pixelcnn_prior.VQVAEPixelCNNPriorModel",
    }
    for name in ("modeling_pixelcnn_prior.py", "configuration_pixelcnn_prior.py", "class_labels.py"):
        assert (tmp_path / "prior" / name).exists(), name
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    remote_class = dynamic.get_class_from_dynamic_module(config["auto_map"]["AutoModel"], str(tmp_path / "prior"))
    assert remote_class.__name__ == "VQVAEPixelCNNPriorModel" and remote_class is not VQVAEPixelCNNPriorModel
    assert remote_class.__module__.startswith("transformers_modules")
    loaded = remote_class.from_pretrained(tmp_path / "prior").eval()
    assert torch.equal(
        loaded.generate_codes(class_labels=["cat", 0], seed=1), model.generate_codes(class_labels=[2, 0], seed=1)
    )
    assert type(AutoModel.from_pretrained(tmp_path / "prior", trust_remote_code=True)) is VQVAEPixelCNNPriorModel


@pytest.mark.slow
def test_trust_remote_code_without_the_package(tmp_path):
    """A saved PixelCNN prior loads and samples where `hf_vqvae` cannot be imported (a subprocess)."""
    model = shared_model()
    model.save_pretrained(tmp_path / "prior")
    torch.save({"codes": model.generate_codes(class_labels=[1, 2], seed=0)}, tmp_path / "expected.pt")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        sys.modules["hf_vqvae"] = None  # even an installed copy cannot be imported
        import torch
        from transformers import AutoModel
        torch.set_num_threads(1)
        model = AutoModel.from_pretrained({str(tmp_path / "prior")!r}, trust_remote_code=True).eval()
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert type(model).__name__ == "VQVAEPixelCNNPriorModel", type(model)
        assert torch.equal(model.generate_codes(class_labels=["bee", "cat"], seed=0), expected["codes"])
        print("remote code ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


# ---------------------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def prior_folders(tmp_path_factory):
    """A tiny VQ-VAE (16x16 images, 4x4 codes, K=16) and a PixelCNN and a transformer prior over its codes."""
    root = tmp_path_factory.mktemp("priors")
    torch.manual_seed(0)
    vqvae = VQVAEModel(make_tiny_config())
    vqvae.save_pretrained(root / "vqvae")
    VQVAEImageProcessor.from_model_config(vqvae.config).save_pretrained(root / "vqvae")
    grid = tuple(vqvae.config.latent_size())
    folders = {"vqvae": root / "vqvae"}
    pixelcnn = make_model(grid_size=grid)
    transformer = VQVAEPriorForCausalLM(
        make_tiny_prior_config(grid_size=grid, id2label=dict(enumerate(CLASS_NAMES)))
    ).eval()
    for name, prior in (("pixelcnn", pixelcnn), ("transformer", transformer)):
        prior.save_pretrained(root / name)
        save_vqvae_reference(root / name, str(root / "vqvae"), vqvae)
        folders[name] = root / name
    return folders


@pytest.mark.parametrize("prior_type", ["pixelcnn", "transformer"])
def test_generation_pipeline_works_with_either_prior(prior_folders, prior_type):
    generate = pipeline("vqvae-generation", model=str(prior_folders[prior_type]))
    assert isinstance(generate, VQVAEGenerationPipeline)
    expected_class = VQVAEPixelCNNPriorModel if prior_type == "pixelcnn" else VQVAEPriorForCausalLM
    assert type(generate.model) is expected_class
    outputs = generate(["cat", 0], num_images=2, guidance_scale=2.0, top_k=8, seed=0, return_codes=True)
    assert [(o["class_label"], o["label"]) for o in outputs] == [(2, "cat"), (2, "cat"), (0, "ant"), (0, "ant")]
    assert all(o["image"].size == (16, 16) and o["codes"].shape == (4, 4) for o in outputs)
    again = generate(["cat", 0], num_images=2, guidance_scale=2.0, top_k=8, seed=0, return_codes=True)
    assert all(torch.equal(a["codes"], b["codes"]) for a, b in zip(outputs, again))
    direct = generate.model.generate_codes(class_labels=[2, 2, 0, 0], guidance_scale=2.0, top_k=8, seed=0)
    assert torch.equal(torch.stack([o["codes"] for o in outputs]), direct)
    with pytest.raises(ValueError, match="Unknown class name"):
        generate(["dog"])


def test_sample_script_with_a_pixelcnn_prior(prior_folders, tmp_path, capsys):
    sample = import_script("sample")
    argv = ["--prior", str(prior_folders["pixelcnn"]), "--num_per_class", "2", "--classes", "0", "cat"]
    argv += ["--guidance_scale", "2.0", "--seed", "0", "--codes_file", str(tmp_path / "codes.pt")]
    result = sample.main(sample.parse_args([*argv, "--output_file", str(tmp_path / "a.png")]))
    sample.main(sample.parse_args([*argv, "--output_file", str(tmp_path / "b.png")]))
    assert result["num_images"] == 4 and result["num_rows"] == 2
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    saved = torch.load(tmp_path / "codes.pt", weights_only=False)
    assert saved["codes"].shape == (4, 4, 4) and saved["class_labels"].tolist() == [0, 0, 2, 2]
    assert "row 1: class 2 (cat)" in capsys.readouterr().out


@pytest.mark.slow
def test_train_prior_script_trains_and_resumes_a_pixelcnn_prior(prior_folders, tmp_path):
    """`train_prior.py --prior_type pixelcnn`: codes cache, validation NLL, samples, card, checkpoints, resume."""
    sample_data = REPO_ROOT / "data" / "cifar10_sample"
    vqvae_dir = tmp_path / "vqvae32"
    torch.manual_seed(0)
    vqvae = VQVAEModel(make_tiny_config(image_size=32))  # 8x8 codes of the 32x32 sample images
    vqvae.save_pretrained(vqvae_dir)
    output = tmp_path / "run"

    def run(steps, extra=()):
        command = [sys.executable, str(REPO_ROOT / "scripts" / "train_prior.py")]
        command += ["--vqvae_model_name_or_path", str(vqvae_dir), "--prior_type", "pixelcnn"]
        command += ["--config_overrides", "hidden_channels=8,num_layers=2,head_channels=16"]
        command += ["--train_data_files", str(sample_data / "train-*.parquet")]
        command += ["--validation_data_files", str(sample_data / "test-*.parquet"), "--label_column", "label"]
        command += ["--max_train_samples", "32", "--max_eval_samples", "16", "--train_batch_size", "8"]
        command += ["--max_train_steps", str(steps), "--checkpointing_steps", "2", "--validation_steps", "2"]
        command += ["--num_validation_samples", "2", "--report_to", "none", "--output_dir", str(output), *extra]
        env = {
            "PYTHONPATH": str(REPO_ROOT),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
        }
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return result.stdout + result.stderr

    run(2)
    log = run(4, ["--resume_from_checkpoint", "latest"])
    assert "Reusing the codes cache" in log
    for name in ("config.json", "model.safetensors", "modeling_pixelcnn_prior.py", "vqvae_reference.json"):
        assert (output / name).exists(), name
    assert (output / "samples" / "step-4.png").exists() and (output / "checkpoint-4" / "prior").is_dir()
    steps = [json.loads(line)["step"] for line in (output / "validation_log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    card = (output / "README.md").read_text()
    assert "gated PixelCNN" in card and "AutoModel.from_pretrained" in card
    prior = load_prior(output)
    assert type(prior) is VQVAEPixelCNNPriorModel and prior.config.grid_size == (8, 8)
    assert prior.config.id2label[3] == "cat"


def import_script(name: str):
    """A module of `scripts/` (or `scripts/benchmarks/`), imported by path as the scripts' own tests do."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))


def test_bits_per_dim_script_takes_a_pixelcnn_prior(tmp_path):
    evaluate_bits_per_dim = import_script("evaluate_bits_per_dim")
    torch.manual_seed(0)
    vqvae = VQVAEModel(make_tiny_config(image_size=32))  # 8x8 codes of the 32x32 sample images
    vqvae.save_pretrained(tmp_path / "vqvae")
    prior = make_model(grid_size=(8, 8), num_classes=10, id2label=None, label2id=None)
    prior.save_pretrained(tmp_path / "prior")
    save_vqvae_reference(tmp_path / "prior", str(tmp_path / "vqvae"), vqvae)
    sample_data = REPO_ROOT / "data" / "cifar10_sample"
    args = ["--model", str(tmp_path / "vqvae"), "--prior", str(tmp_path / "prior")]
    args += ["--data_files", str(sample_data / "test-*.parquet"), "--max_samples", "6", "--batch_size", "3"]
    args += ["--scale_fit_data_files", str(sample_data / "train-*.parquet"), "--scale_fit_samples", "6"]
    results = evaluate_bits_per_dim.main(evaluate_bits_per_dim.parse_args(args))
    assert results["codes_per_image"] == 64 and results["learned_prior_bits_per_dim"] > 0
    assert results["bits_per_dim_learned_prior"] == pytest.approx(
        results["decoder_bits_per_dim"] + results["learned_prior_bits_per_dim"]
    )


def test_anomaly_scorer_takes_a_pixelcnn_prior():
    torch.manual_seed(0)
    vqvae = VQVAEModel(make_tiny_config()).eval()  # 16x16 images, 4x4 codes, K=16
    prior = make_model(grid_size=tuple(vqvae.config.latent_size()))
    pixel_values = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    output = VQVAEAnomalyScorer(vqvae, prior, class_label="cat").score(pixel_values)
    with torch.no_grad():
        codes = vqvae.encode(pixel_values).codes
    expected = -prior.code_log_likelihood(codes, class_labels=2)  # (2, 4, 4)
    torch.testing.assert_close(output.code_nll, expected)
    torch.testing.assert_close(output.prior_nll, expected.mean((1, 2)))
