"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`, `GenerationTesterMixin`) run against
`VQVAEPriorForCausalLM`.

The mixins come from the installed transformers' sdist (see `transformers_common.py`), as transformers' own model
tests use them; `GenerationTesterMixin` only where a developer has transformers' `tests/generation/test_utils.py`
(not in the sdist: `transformers_common.generation_tests_file()`), otherwise the generation tests are skipped with
that reason. Tests are skipped only where the feature does not exist for this prior; each skip says why.
"""

import unittest
from unittest.mock import patch

import pytest
import torch
from transformers_common import GENERATION_TESTS_MISSING, generation_tests_file, load_common_tests

from hf_vqvae import VQVAEPriorCodeMapping, VQVAEPriorConfig, VQVAEPriorForCausalLM, VQVAEPriorModel


test_modeling_common, test_configuration_common = load_common_tests()
ModelTesterMixin = test_modeling_common.ModelTesterMixin
ConfigTester = test_configuration_common.ConfigTester
GenerationTesterMixin = test_modeling_common.GenerationTesterMixin
# The stand-in (an empty mixin) has no tests; the real one has `test_greedy_generate` among others.
HAS_GENERATION_TESTS = hasattr(GenerationTesterMixin, "test_greedy_generate")

pytestmark = pytest.mark.slow


def prefix_labels(input_ids: torch.LongTensor) -> torch.LongTensor:
    """Training targets of a prompt and codes (a prefix of a grid): the codes, with the prompt ignored (-100)."""
    labels = input_ids.clone()
    labels[:, 0] = -100
    return labels


class VQVAEPriorModelTester:
    # 7: the batch of `test_eager_matches_sdpa_inference`, which would otherwise add rows of random ids (no prompt)
    # The inputs are the prompt and the first `seq_length - 1` codes of a (2, 5) grid: a prefix, so that `generate`
    # (the generation mixin continues the common inputs by up to 4 tokens) stays within the 11 positions of a grid,
    # which is also the `max_position_embeddings` the attention-implementation generate tests set (prompt + 4).
    def __init__(
        self, parent, batch_size=7, codebook_size=16, grid_size=(2, 5), num_classes=3, is_training=True, seq_length=7
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.codebook_size = codebook_size
        self.grid_size = grid_size
        self.num_classes = num_classes
        self.is_training = is_training
        self.seq_length = seq_length
        self.vocab_size = codebook_size + 1 + num_classes
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 2

    def get_config(self) -> VQVAEPriorConfig:
        return VQVAEPriorConfig(
            codebook_size=self.codebook_size,
            grid_size=self.grid_size,
            num_classes=self.num_classes,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=64,
        )

    def prepare_config_and_inputs(self):
        config = self.get_config()
        # The prior's fixed layout: a class prompt then the codes of one grid (random ids would be refused).
        generator = torch.Generator().manual_seed(0)
        codes = torch.randint(0, self.codebook_size, (self.batch_size, *self.grid_size), generator=generator)
        labels = torch.randint(0, self.num_classes, (self.batch_size,), generator=generator)
        mapping = VQVAEPriorCodeMapping.from_config(config)
        input_ids = mapping.codes_to_input_ids(codes, labels)[:, : self.seq_length]
        return config, input_ids, prefix_labels(input_ids)

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class VQVAEPriorGenerationTests(GenerationTesterMixin):
    """Where transformers' generation tests meet the prior's fixed layout (used with the real mixin only)."""

    def _run_with_is_stateful(self, test):
        # transformers 5.15's assisted-decoding tests first read `model_class._is_stateful` (whether the cache can be
        # rolled back), an attribute transformers no longer declares; the prior's cache is a `DynamicCache`, which
        # can. The test then runs as written.
        with patch.object(VQVAEPriorForCausalLM, "_is_stateful", False, create=True):
            test()

    def test_assisted_decoding_matches_greedy_search_0_random(self):
        self._run_with_is_stateful(super().test_assisted_decoding_matches_greedy_search_0_random)

    def test_assisted_decoding_matches_greedy_search_1_same(self):
        self._run_with_is_stateful(super().test_assisted_decoding_matches_greedy_search_1_same)

    def test_assisted_decoding_sample(self):
        self._run_with_is_stateful(super().test_assisted_decoding_sample)

    # Two entries of transformers' file are not tests, and would count as passed without running anything.
    @unittest.skip(
        reason="Never runs in transformers' file: it is decorated with `@is_flaky` instead of `@is_flaky()`, so the "
        "test method only builds the retry decorator (it 'passes' for every model); not counted as passed here"
    )
    def test_prompt_lookup_decoding_matches_greedy_search(self):
        pass

    @unittest.skip(
        reason="The placeholder `parameterized.expand` leaves behind; its cases run as test_generate_from_inputs_embeds_*"
    )
    def test_generate_from_inputs_embeds(self):
        pass

    NO_INPUTS_EMBEDS = (
        "The prior reads token ids only (a prompt then codes, whose layout it checks): it takes no `inputs_embeds`, "
        "and refuses them with a ValueError (test_inputs_embeds_is_refused_not_ignored in test_modeling_vqvae_prior.py)"
    )

    @unittest.skip(reason=NO_INPUTS_EMBEDS)
    def test_generate_from_inputs_embeds_0_greedy(self):
        pass

    @unittest.skip(reason=NO_INPUTS_EMBEDS)
    def test_generate_from_inputs_embeds_1_beam_search(self):
        pass

    @unittest.skip(reason=NO_INPUTS_EMBEDS)
    def test_generate_from_random_inputs_embeds(self):
        pass

    @unittest.skip(reason=NO_INPUTS_EMBEDS)
    def test_generate_continue_from_inputs_embeds(self):
        pass

    @unittest.skip(
        reason="The prior's sequences are never padded: every one is a prompt at position 0 then codes, at most "
        "1 + h * w tokens (`max_position_embeddings`), so a batch always has one length; the test puts 32 pad tokens "
        "before the prompt. Padding masks inside a sequence are tested in test_modeling_vqvae_prior.py"
    )
    def test_left_padding_compatibility(self):
        pass


class VQVAEPriorModelTest(
    ModelTesterMixin,
    VQVAEPriorGenerationTests if HAS_GENERATION_TESTS else GenerationTesterMixin,
    unittest.TestCase,
):
    all_model_classes = (VQVAEPriorModel, VQVAEPriorForCausalLM)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is VQVAEPriorForCausalLM:
            # transformers adds labels for the causal LMs of its own mappings only; the prior's are its codes.
            inputs_dict["labels"] = prefix_labels(inputs_dict["input_ids"])
        return inputs_dict

    @unittest.skip(
        reason="The prior's vocabulary is its layout (codes, bos, class prompts): the test puts a class prompt at "
        "position -2, where a code must be, and shrinks the vocabulary below the codes; growing (new class prompts) "
        "with save/load is tested in test_modeling_vqvae_prior.py"
    )
    def test_resize_tokens_embeddings(self):
        pass

    @unittest.skip(
        reason="Shrinks the vocabulary below the codes, which the prior refuses (its vocabulary is codes, bos and "
        "class prompts); growing untied embeddings is tested in test_modeling_vqvae_prior.py"
    )
    def test_resize_embeddings_untied(self):
        pass

    def test_training(self):
        # transformers leaves its base models (the static `MODEL_MAPPING_NAMES`) out of this test, as they have no
        # loss; VQVAEPriorModel is the prior's base model, registered with AutoModel by hf_vqvae instead.
        with patch.object(self, "all_model_classes", (VQVAEPriorForCausalLM,)):
            super().test_training()

    def test_generation_tester_mixin(self):
        if not HAS_GENERATION_TESTS:
            self.skipTest(
                f"transformers' GenerationTesterMixin tests are not run: {GENERATION_TESTS_MISSING} (put a copy "
                f"at {generation_tests_file()} or name it in $HF_VQVAE_GENERATION_TESTS to run them)"
            )
        self.assertTrue(self.all_generative_model_classes)  # the real mixin's tests run with the prior

    def setUp(self):
        self.model_tester = VQVAEPriorModelTester(self)
        self.config_tester = ConfigTester(self, config_class=VQVAEPriorConfig, hidden_size=32)

    def test_config(self):
        self.config_tester.run_common_tests()
