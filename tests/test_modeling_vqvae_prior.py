"""Tests of VQVAEPriorConfig, VQVAEPriorForCausalLM and the code <-> token mapping, on a tiny config."""

import functools
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, make_tiny_prior_config
from hypothesis import given, settings
from hypothesis import strategies as st
from test_modeling_vqvae import CommonModelTests
from transformers import AutoModelForCausalLM, DynamicCache

from hf_vqvae import VQVAEPriorCodeMapping, VQVAEPriorConfig, VQVAEPriorForCausalLM, VQVAEPriorModel
from hf_vqvae.modeling_vqvae_prior import CACHE_OUTPUT_FIELD


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models spend their time synchronising threads (ms per op on a busy machine); one thread is ~50x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class VQVAEPriorModelTester:
    """Builds tiny configs and inputs for `VQVAEPriorForCausalLM` (K=16 codes on a (2, 3) grid, 3 classes)."""

    batch_size = 3
    main_output = "logits"

    def __init__(self, **config_kwargs):
        self.config_kwargs = config_kwargs

    def get_config(self) -> VQVAEPriorConfig:
        return make_tiny_prior_config(**self.config_kwargs)

    def get_dummy_inputs(self, seed: int = 0) -> dict:
        config = self.get_config()
        generator = torch.Generator().manual_seed(seed)
        codes = torch.randint(0, config.codebook_size, (self.batch_size, *config.grid_size), generator=generator)
        class_labels = torch.arange(self.batch_size) % config.num_classes if config.num_classes else None
        mapping = VQVAEPriorCodeMapping.from_config(config)
        return {"input_ids": mapping.codes_to_input_ids(codes, class_labels), "labels": mapping.codes_to_labels(codes)}

    def expected_shapes(self) -> dict:
        config = self.get_config()
        return {"logits": (self.batch_size, 1 + config.num_codes, config.vocab_size), "loss": ()}

    def expected_dtypes(self) -> dict:
        return {"logits": torch.float32}


class TestVQVAEPrior(CommonModelTests):
    model_class = VQVAEPriorForCausalLM
    auto_class = AutoModelForCausalLM
    tester = VQVAEPriorModelTester()


class TestVQVAEPriorUnconditionalTied(CommonModelTests):
    model_class = VQVAEPriorForCausalLM
    auto_class = AutoModelForCausalLM
    tester = VQVAEPriorModelTester(num_classes=0, tie_word_embeddings=True, hidden_dropout_prob=0.1)


def make_model(**kwargs) -> VQVAEPriorForCausalLM:
    torch.manual_seed(0)
    return VQVAEPriorForCausalLM(make_tiny_prior_config(**kwargs)).eval()


@functools.cache
def shared_model() -> VQVAEPriorForCausalLM:
    """One tiny model for the tests that only read it (hypothesis runs a test many times)."""
    return make_model()


def random_codes(batch_size: int = 4, seed: int = 0) -> torch.LongTensor:
    return torch.randint(0, 16, (batch_size, 2, 3), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ config


def test_config_derives_token_ids():
    config = make_tiny_prior_config()
    assert (config.vocab_size, config.bos_token_id, config.max_position_embeddings) == (20, 16, 7)
    assert config.pad_token_id is None and config.eos_token_id is None and config.num_codes == 6
    assert VQVAEPriorConfig().vocab_size == 513 and VQVAEPriorConfig().max_position_embeddings == 65
    # Consistent values (as in a saved config.json) are accepted; JSON lists become tuples.
    restored = VQVAEPriorConfig.from_dict(json.loads(config.to_json_string()))
    assert restored.grid_size == (2, 3) and restored.vocab_size == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocab_size": 19}, "`vocab_size` is derived"),
        ({"bos_token_id": 0}, "`bos_token_id` is derived"),
        ({"max_position_embeddings": 64}, "`max_position_embeddings` is derived"),
        ({"pad_token_id": 0}, "`pad_token_id` is derived"),
        ({"eos_token_id": 3}, "`eos_token_id` is derived"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "divisible by `num_attention_heads`"),
        ({"codebook_size": 0}, "`codebook_size` must be a positive integer"),
        ({"num_hidden_layers": 1.5}, "`num_hidden_layers` must be a positive integer"),
        ({"num_classes": -1}, "`num_classes`"),
        ({"grid_size": (2,)}, "`grid_size`"),
        ({"grid_size": (0, 3)}, "`grid_size`"),
        ({"class_dropout_prob": 1.0}, r"`class_dropout_prob` must be a probability in \[0, 1\)"),
        ({"hidden_dropout_prob": -0.1}, "`hidden_dropout_prob`"),
        ({"attention_dropout_prob": 1.5}, "`attention_dropout_prob`"),
        ({"layer_norm_eps": 0.0}, "`layer_norm_eps`"),
    ],
)
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tiny_prior_config(**kwargs)


# ------------------------------------------------------------------------------------------------ mapping


@settings(max_examples=40, deadline=None)
@given(
    codebook_size=st.integers(1, 600),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    num_classes=st.integers(0, 5),
    batch_size=st.integers(1, 4),
    data=st.data(),
)
def test_mapping_round_trip(codebook_size, height, width, num_classes, batch_size, data):
    mapping = VQVAEPriorCodeMapping(codebook_size=codebook_size, grid_size=(height, width), num_classes=num_classes)
    values = data.draw(
        st.lists(
            st.integers(0, codebook_size - 1),
            min_size=batch_size * height * width,
            max_size=batch_size * height * width,
        )
    )
    codes = torch.tensor(values, dtype=torch.long).view(batch_size, height, width)
    class_labels = None
    if num_classes:
        class_labels = data.draw(
            st.none() | st.lists(st.integers(0, num_classes - 1), min_size=batch_size, max_size=batch_size)
        )

    input_ids = mapping.codes_to_input_ids(codes, class_labels)
    assert input_ids.shape == (batch_size, 1 + height * width) and input_ids.dtype == torch.long
    expected_prompt = (
        [codebook_size] * batch_size if class_labels is None else [codebook_size + 1 + c for c in class_labels]
    )
    assert input_ids[:, 0].tolist() == expected_prompt
    assert torch.equal(input_ids[:, 1:], codes.flatten(1))  # row-major, token id = code
    assert torch.equal(mapping.input_ids_to_codes(input_ids), codes)
    labels = mapping.codes_to_labels(codes)
    assert (labels[:, 0] == -100).all() and torch.equal(labels[:, 1:], input_ids[:, 1:])


def test_mapping_prompt_ids():
    mapping = VQVAEPriorCodeMapping(codebook_size=16, grid_size=(2, 3), num_classes=3)
    assert mapping.prompt_ids(batch_size=2).tolist() == [[16], [16]]
    assert mapping.prompt_ids(2, batch_size=3).tolist() == [[19], [19], [19]]
    assert mapping.prompt_ids(torch.tensor([0, 1])).tolist() == [[17], [18]]
    assert mapping.prompt_ids([0, 2]).dtype == torch.long


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.codes_to_input_ids(torch.zeros(1, 3, 2, dtype=torch.long)), r"shape \(batch, 2, 3\)"),
        (lambda m: m.codes_to_input_ids(torch.zeros(1, 2, 3)), "integer tensor"),
        (lambda m: m.codes_to_input_ids(torch.full((1, 2, 3), 16)), r"\[0, 16\)"),
        (lambda m: m.codes_to_input_ids(torch.full((1, 2, 3), -1)), "Padding ids"),
        (lambda m: m.codes_to_input_ids(random_codes(2), class_labels=[0]), "Got 1 `class_labels` for a batch of 2"),
        (lambda m: m.codes_to_input_ids(random_codes(1), class_labels=[3]), r"\[0, 3\) \(`num_classes`\)"),
        (lambda m: m.codes_to_input_ids(random_codes(1), class_labels=[0.5]), "`class_labels` must be an int"),
        (lambda m: m.prompt_ids(batch_size=0), "`batch_size`"),
        (lambda m: m.input_ids_to_codes(torch.zeros(1, 6, dtype=torch.long)), r"shape \(batch, 7\)"),
        (lambda m: m.input_ids_to_codes(torch.zeros(1, 7, dtype=torch.long)), "first token .* must be a prompt"),
        (lambda m: m.input_ids_to_codes(torch.tensor([[16, 0, 1, 2, 3, 17, 5]])), r"must be codes in \[0, 16\)"),
    ],
)
def test_mapping_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(VQVAEPriorCodeMapping(codebook_size=16, grid_size=(2, 3), num_classes=3))


def test_unconditional_mapping_rejects_class_labels():
    mapping = VQVAEPriorCodeMapping(codebook_size=16, grid_size=(2, 3))
    with pytest.raises(ValueError, match="unconditional"):
        mapping.prompt_ids([0])


# ------------------------------------------------------------------------------------------------ forward


def test_loss_ignores_minus_100_and_matches_hand_computed_cross_entropy():
    model = make_model()
    codes = random_codes(3)
    input_ids = model.code_mapping.codes_to_input_ids(codes, class_labels=[0, 1, 2])
    labels = model.code_mapping.codes_to_labels(codes)
    labels[0, 2] = labels[2, 6] = -100  # ignore two more positions
    with torch.no_grad():
        output = model(input_ids, labels=labels)
    log_probs = F.log_softmax(output.logits.float(), dim=-1)  # (B, T, V)
    kept = [(b, t) for b in range(3) for t in range(1, 7) if labels[b, t] != -100]
    expected = -sum(log_probs[b, t - 1, labels[b, t]] for b, t in kept) / len(kept)  # logits at t-1 predict t
    assert len(kept) == 3 * 6 - 2
    assert torch.allclose(output.loss, expected, atol=1e-6)


def test_prompt_ids_get_no_probability():
    model = make_model()
    with torch.no_grad():
        logits = model(**VQVAEPriorModelTester().get_dummy_inputs()).logits
    assert (logits[..., 16:] == torch.finfo(logits.dtype).min).all()
    assert torch.isfinite(logits).all() and (F.softmax(logits, dim=-1)[..., 16:] == 0).all()


def test_incremental_forward_with_cache_matches_full_forward():
    model = make_model()
    input_ids = VQVAEPriorModelTester().get_dummy_inputs()["input_ids"]  # (3, 7)
    with torch.no_grad():
        full = model(input_ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        pieces = [model(input_ids[:, a:b], cache=cache).logits for a, b in ((0, 2), (2, 5), (5, 6), (6, 7))]
    assert cache.get_seq_length() == 7
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_cache_is_also_accepted_under_its_name_before_transformers_5_24():
    model = make_model()
    input_ids = VQVAEPriorModelTester().get_dummy_inputs()["input_ids"]
    with torch.no_grad():
        full = model(input_ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        first = model(input_ids[:, :3], past_key_values=cache)
        rest = model(input_ids[:, 3:], past_key_values=cache)
        assert getattr(first, CACHE_OUTPUT_FIELD) is cache
        with pytest.raises(ValueError, match="once"):
            model(
                input_ids, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config)
            )
    assert torch.allclose(torch.cat([first.logits, rest.logits], dim=1), full, atol=1e-5)


def test_residual_projections_get_the_scaled_init():
    model = make_model(num_hidden_layers=2, hidden_size=64, intermediate_size=128)
    block = model.prior.layers[0]
    assert abs(block.attn.qkv.weight.std().item() - 0.02) < 0.002
    for residual in (block.attn.proj, block.mlp.fc_out):  # 0.02 / sqrt(2 * num_hidden_layers), as in GPT-2
        assert abs(residual.weight.std().item() - 0.01) < 0.001


def test_tie_word_embeddings_shares_the_weights(tmp_path, tiny_prior_config):
    untied = VQVAEPriorForCausalLM(tiny_prior_config)
    assert untied.lm_head.weight is not untied.prior.embed_tokens.weight
    make_model(tie_word_embeddings=True).save_pretrained(tmp_path)
    tied = VQVAEPriorForCausalLM.from_pretrained(tmp_path)
    assert tied.lm_head.weight is tied.prior.embed_tokens.weight


def test_use_cache_defaults():
    model = make_model()
    inputs = VQVAEPriorModelTester().get_dummy_inputs()
    with torch.no_grad():
        assert isinstance(getattr(model(**inputs), CACHE_OUTPUT_FIELD), DynamicCache)
        assert getattr(model(**inputs, use_cache=False), CACHE_OUTPUT_FIELD) is None
    assert getattr(model.train()(**inputs), CACHE_OUTPUT_FIELD) is None  # no cache in training unless asked


def test_class_dropout_replaces_the_class_prompt_in_training_only():
    inputs = VQVAEPriorModelTester().get_dummy_inputs()
    unconditional = inputs["input_ids"].clone()
    unconditional[:, 0] = 16
    model = make_model(class_dropout_prob=0.999)
    with torch.no_grad():
        expected_dropped = model(unconditional).logits
        expected_kept = model(inputs["input_ids"]).logits
        torch.manual_seed(0)
        assert torch.equal(model.train()(inputs["input_ids"]).logits, expected_dropped)
    model = make_model(class_dropout_prob=0.0)
    with torch.no_grad():
        assert torch.equal(model.train()(inputs["input_ids"]).logits, expected_kept)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_ids": torch.tensor([[16.0, 1.0]])}, r"integer \(torch.long\) tensor"),
        ({"input_ids": torch.tensor([16, 1])}, r"shape \(batch, seq_len\)"),
        ({"input_ids": torch.tensor([[20, 1]])}, r"\[0, 20\) \(`vocab_size`\)"),
        ({"input_ids": torch.tensor([[-1, 1]])}, r"\[0, 20\) \(`vocab_size`\)"),
        ({"input_ids": torch.tensor([[16, 1, 2, 3, 4, 5, 6, 7]])}, "longer than `max_position_embeddings` \\(7"),
        ({"input_ids": torch.tensor([[1, 2, 3]])}, "one prompt token"),
        ({"input_ids": torch.tensor([[16, 2, 17]])}, "one prompt token"),
        ({"input_ids": torch.tensor([[16, 2]]), "attention_mask": torch.ones(1, 3)}, r"shape \(1, 2\)"),
        ({"input_ids": torch.tensor([[16, 2]]), "position_ids": torch.tensor([[0, 7]])}, "`position_ids`"),
        ({"input_ids": torch.tensor([[16, 2]]), "labels": torch.tensor([[-100, 16]])}, "`labels` must be codes"),
        ({"input_ids": torch.tensor([[16, 2]]), "labels": torch.tensor([[2]])}, "shape of `input_ids`"),
    ],
)
def test_forward_rejects_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_model()(**kwargs)


def test_inputs_embeds_is_refused_not_ignored():
    # transformers' GenerationTesterMixin (`test_generate_from_inputs_embeds`) found it: `inputs_embeds` fell into
    # `**kwargs` and was ignored, so `model(input_ids, inputs_embeds=...)` returned the logits of `input_ids` alone.
    model = make_model().eval()
    input_ids = random_input_ids(model)
    embeds = torch.randn(*input_ids.shape, model.config.hidden_size)
    for forward in (model, model.prior):
        with pytest.raises(ValueError, match="`inputs_embeds` is not supported"):
            forward(input_ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="`inputs_embeds` is not supported"):
        model.generate(inputs_embeds=embeds[:, :1], max_new_tokens=2)
    with torch.no_grad():  # `None`, as generate passes it, is no embedding
        torch.testing.assert_close(model(input_ids, inputs_embeds=None).logits, model(input_ids).logits)


# ------------------------------------------------------------------------------------------------ generation


@pytest.mark.parametrize("guidance_scale", [None, 3.0])
def test_cached_and_uncached_greedy_generation_agree(guidance_scale):
    model = make_model()
    labels = [0, 1, 2]
    cached = model.generate_codes(class_labels=labels, guidance_scale=guidance_scale, do_sample=False)
    uncached = model.generate_codes(
        class_labels=labels, guidance_scale=guidance_scale, do_sample=False, use_cache=False
    )
    assert torch.equal(cached, uncached)
    # Plain `generate` from the bos prompt: the default length is one whole grid.
    prompt = model.code_mapping.prompt_ids(batch_size=2)
    sequences = model.generate(prompt, do_sample=False)
    assert sequences.shape == (2, 7)
    assert torch.equal(sequences, model.generate(prompt, do_sample=False, use_cache=False))


def test_greedy_generation_follows_the_logits():
    model = make_model()
    codes = model.generate_codes(num_samples=2, do_sample=False)
    input_ids = model.code_mapping.codes_to_input_ids(codes)
    with torch.no_grad():
        logits = model(input_ids).logits
    assert torch.equal(logits[:, :-1].argmax(-1), input_ids[:, 1:])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    class_labels=st.none() | st.lists(st.integers(0, 2), min_size=1, max_size=4),
    temperature=st.sampled_from([0.3, 1.0, 3.0]),
    top_p=st.sampled_from([None, 0.5, 1.0]),
    top_k=st.sampled_from([None, 1, 5]),
    guidance_scale=st.sampled_from([None, 0.0, 4.0]),
)
def test_sampled_codes_are_in_range_with_the_right_count(
    seed, class_labels, temperature, top_p, top_k, guidance_scale
):
    model = shared_model()
    if class_labels is None:
        guidance_scale = None
    kwargs = {k: v for k, v in {"top_p": top_p, "top_k": top_k}.items() if v is not None}
    codes = model.generate_codes(
        num_samples=None if class_labels else 3,
        class_labels=class_labels,
        seed=seed,
        guidance_scale=guidance_scale,
        temperature=temperature,
        **kwargs,
    )
    assert codes.dtype == torch.long and codes.shape == (len(class_labels) if class_labels else 3, 2, 3)
    assert 0 <= int(codes.min()) and int(codes.max()) < 16


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone():
    model = make_model()
    state = torch.get_rng_state()
    first = model.generate_codes(num_samples=8, seed=123)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, model.generate_codes(num_samples=8, seed=123))
    assert not torch.equal(first, model.generate_codes(num_samples=8, seed=124))
    # Without a seed, sampling draws from (and advances) the global stream: two calls differ.
    assert not torch.equal(model.generate_codes(num_samples=8), model.generate_codes(num_samples=8))


def test_classifier_free_guidance_matches_a_hand_written_loop():
    model = make_model()
    scale, class_labels = 2.5, [0, 2]
    guided = model.generate_codes(class_labels=class_labels, guidance_scale=scale, do_sample=False)
    # log p_u + s * (log p_c - log p_u), the conditional branch prompted by the class, the other by bos.
    conditional = model.code_mapping.prompt_ids(class_labels)
    unconditional = model.code_mapping.prompt_ids(batch_size=2)
    with torch.no_grad():
        for _ in range(6):
            log_p_c = F.log_softmax(model(conditional).logits[:, -1], dim=-1)
            log_p_u = F.log_softmax(model(unconditional).logits[:, -1], dim=-1)
            next_code = (log_p_u + scale * (log_p_c - log_p_u)).argmax(-1, keepdim=True)
            conditional = torch.cat([conditional, next_code], dim=1)
            unconditional = torch.cat([unconditional, next_code], dim=1)
    assert torch.equal(guided, model.code_mapping.input_ids_to_codes(conditional))
    # Guidance 1 is the conditional model itself.
    for do_sample in (False, True):
        plain = model.generate_codes(class_labels=class_labels, do_sample=do_sample, seed=7)
        assert torch.equal(
            model.generate_codes(class_labels=class_labels, guidance_scale=1.0, do_sample=do_sample, seed=7), plain
        )


def test_generate_codes_errors():
    model = make_model()
    with pytest.raises(ValueError, match="`guidance_scale` needs `class_labels`"):
        model.generate_codes(num_samples=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="sets the length"):
        model.generate_codes(num_samples=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="unconditional"):
        make_model(num_classes=0).generate_codes(class_labels=[0])


def test_generation_settings_survive_save_and_load(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    loaded = VQVAEPriorForCausalLM.from_pretrained(tmp_path).eval()
    generation_config = loaded.generation_config
    assert (generation_config.do_sample, generation_config.top_k, generation_config.max_new_tokens) == (True, 0, 6)
    assert torch.equal(
        loaded.generate_codes(class_labels=[1, 2], seed=3), model.generate_codes(class_labels=[1, 2], seed=3)
    )


@pytest.mark.slow
def test_trust_remote_code_without_the_package(tmp_path):
    """A saved prior loads and generates where `hf_vqvae` cannot be imported."""
    model = make_model()
    model.save_pretrained(tmp_path / "prior")
    config = json.loads((tmp_path / "prior" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_vqvae_prior.VQVAEPriorForCausalLM"
    prompt = model.code_mapping.prompt_ids([0, 2])
    expected = {"prompt": prompt, "greedy": model.generate(prompt, do_sample=False)}
    torch.save(expected, tmp_path / "expected.pt")

    code = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
        sys.modules["hf_vqvae"] = None  # even an installed copy cannot be imported
        try:
            import hf_vqvae
            raise SystemExit("hf_vqvae must not be importable here")
        except ImportError:
            pass
        import torch
        from transformers import AutoModelForCausalLM
        torch.set_num_threads(1)
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "prior")!r}, trust_remote_code=True).eval()
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert type(model).__name__ == "VQVAEPriorForCausalLM", type(model)
        assert torch.equal(model.generate(expected["prompt"], do_sample=False), expected["greedy"])
        codes = model.generate_codes(class_labels=[1, 1], guidance_scale=2.0, temperature=0.8, seed=0)
        assert codes.shape == (2, 2, 3) and 0 <= int(codes.min()) and int(codes.max()) < 16
        print("remote code ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


# ------------------------------------------------------------------ issue 21: what transformers' common tests found


def random_input_ids(model, batch_size: int = 3, seed: int = 0) -> torch.LongTensor:
    return model.code_mapping.codes_to_input_ids(random_codes(batch_size, seed), [0, 1, 2][:batch_size])


def test_forward_returns_attentions_and_hidden_states():
    # They were swallowed by `**kwargs` and came back as None.
    model = make_model().eval()
    input_ids = random_input_ids(model)  # (3, 7)
    with torch.no_grad():
        out = model(input_ids, output_attentions=True, output_hidden_states=True)
        plain = model(input_ids)
    config = model.config
    assert len(out.attentions) == config.num_hidden_layers
    assert out.attentions[0].shape == (3, config.num_attention_heads, 7, 7)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(3, config.num_attention_heads, 7))
    assert torch.all(out.attentions[0].triu(diagonal=1) == 0)  # causal
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (3, 7, config.hidden_size) for h in out.hidden_states)
    torch.testing.assert_close(out.logits, plain.logits)  # the eager attention computes the same thing
    assert plain.attentions is None and plain.hidden_states is None


def test_generate_returns_attentions_and_hidden_states():
    model = make_model().eval()
    out = model.generate(
        model.code_mapping.prompt_ids([0, 2]),
        do_sample=False,
        return_dict_in_generate=True,
        output_attentions=True,
        output_hidden_states=True,
    )
    steps = model.config.num_codes
    assert len(out.attentions) == steps and len(out.hidden_states) == steps
    assert out.attentions[0][0].shape == (2, model.config.num_attention_heads, 1, 1)
    assert out.attentions[-1][0].shape == (2, model.config.num_attention_heads, 1, steps)
    assert out.hidden_states[-1][-1].shape == (2, 1, model.config.hidden_size)


def test_eager_and_sdpa_attention_agree_with_and_without_a_cache():
    sdpa = make_model().eval()
    assert sdpa.config._attn_implementation == "sdpa" and type(sdpa)._supports_sdpa
    eager = make_model(attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    input_ids = random_input_ids(sdpa)
    with torch.no_grad():
        torch.testing.assert_close(eager(input_ids).logits, sdpa(input_ids).logits)
        first = eager(input_ids[:, :3], use_cache=True)
        rest = eager(input_ids[:, 3:], cache=first.cache)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), sdpa(input_ids).logits)


def test_forward_with_a_static_cache_is_exact():
    # The attention took the static cache's preset length for the number of real tokens (logits off by ~0.09).
    from transformers import StaticCache

    model = make_model().eval()
    input_ids = random_input_ids(model)
    with torch.no_grad():
        expected = model(input_ids).logits
        cache = StaticCache(config=model.config, max_cache_len=model.config.max_position_embeddings)
        logits = [model(input_ids[:, :3], cache=cache).logits]
        for t in range(3, input_ids.shape[1]):
            logits.append(model(input_ids[:, t : t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(logits, 1), expected)


def test_generate_with_a_static_cache_matches_the_dynamic_cache():
    # `generate(cache_implementation="static")` raised on the 4-D mask that generate passes.
    model = make_model().eval()
    prompt = model.code_mapping.prompt_ids([0, 1, 2])
    dynamic = model.generate(prompt, do_sample=False)
    static = model.generate(prompt, do_sample=False, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_a_padding_mask_is_honoured():
    # A 2-D mask with zeros was refused; it now masks those keys, as in every transformers model.
    model = make_model().eval()
    input_ids = random_input_ids(model, batch_size=1)
    mask = torch.ones_like(input_ids)
    mask[:, 2] = 0
    with torch.no_grad():
        masked = model(input_ids, attention_mask=mask, output_attentions=True)
    assert torch.all(masked.attentions[0][..., 2][..., 3:] == 0)  # later queries ignore key 2
    with torch.no_grad():
        plain = model(input_ids)
    torch.testing.assert_close(masked.logits[:, :2], plain.logits[:, :2])  # earlier queries never saw it
    assert not torch.allclose(masked.logits[:, 3:], plain.logits[:, 3:])


def test_resize_token_embeddings_adds_class_prompts_and_round_trips(tmp_path):
    # Resizing succeeded but the saved model could not be loaded (`vocab_size` is derived from `num_classes`).
    model = make_model().eval()
    model.resize_token_embeddings(model.config.vocab_size + 2)
    assert (model.config.num_classes, model.config.vocab_size) == (5, 22)
    assert model.generate_codes(class_labels=[4], seed=0).shape == (1, 2, 3)  # a new class is usable
    model.save_pretrained(tmp_path)
    loaded = VQVAEPriorForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_classes == 5
    input_ids = model.code_mapping.codes_to_input_ids(random_codes(2), [4, 3])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, model(input_ids).logits)


@pytest.mark.parametrize("new_num_tokens", [19, 16, 5])
def test_resize_token_embeddings_refuses_to_shrink(new_num_tokens):
    model = make_model()
    with pytest.raises(ValueError, match="can only grow"):
        model.resize_token_embeddings(new_num_tokens)
    assert model.config.vocab_size == 20 and model.get_input_embeddings().num_embeddings == 20


def test_base_model_is_a_pretrained_model_that_saves_and_loads(tmp_path):
    # `base_model_prefix` named a plain nn.Module, so `model.base_model.save_pretrained` failed.
    from transformers import AutoModel

    model = make_model().eval()
    assert isinstance(model.base_model, VQVAEPriorModel)
    model.base_model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, VQVAEPriorModel)
    input_ids = random_input_ids(model)
    with torch.no_grad():
        assert torch.equal(base(input_ids).last_hidden_state, model.prior(input_ids).last_hidden_state)
    # and the head loads on top of the base model's weights
    head = VQVAEPriorForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(head.prior.embed_tokens.weight, model.prior.embed_tokens.weight)


def test_past_key_values_still_works_with_a_deprecation_warning():
    model = make_model().eval()
    input_ids = random_input_ids(model)
    with torch.no_grad():
        first = model(input_ids[:, :3], use_cache=True)
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
            rest = model(input_ids[:, 3:], past_key_values=first.cache)
        torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), model(input_ids).logits)


def test_generate_codes_and_log_likelihood_take_class_names():
    model = make_model(id2label={0: "cat", 1: "dog", 2: "ship"})
    by_name = model.generate_codes(class_labels=["ship", "cat"], seed=0)
    assert torch.equal(by_name, model.generate_codes(class_labels=[2, 0], seed=0))
    codes = random_codes(2)
    torch.testing.assert_close(
        model.code_log_likelihood(codes, class_labels=["dog", "dog"]), model.code_log_likelihood(codes, [1, 1])
    )
    with pytest.raises(ValueError, match=r"Unknown class name 'horse' in `class_labels`"):
        model.generate_codes(class_labels=["horse"])


def test_attention_implementation_can_be_set_at_run_time():
    # transformers refused `set_attn_implementation` for the prior (its attention did not use the attention interface).
    model = make_model().eval()
    input_ids = random_input_ids(model)
    with torch.no_grad():
        expected = model(input_ids).logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        torch.testing.assert_close(model(input_ids).logits, expected)
