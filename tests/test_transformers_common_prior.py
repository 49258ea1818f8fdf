"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run against `VQVAEPriorForCausalLM`.

The mixins come from the installed transformers' sdist (see `transformers_common.py`), as transformers' own model
tests use them. Tests are skipped only where the feature does not exist for this prior; each skip says why.
"""

import unittest
from unittest.mock import patch

import pytest
import torch
from transformers_common import load_common_tests

from hf_vqvae import VQVAEPriorCodeMapping, VQVAEPriorConfig, VQVAEPriorForCausalLM, VQVAEPriorModel


test_modeling_common, test_configuration_common = load_common_tests()
ModelTesterMixin = test_modeling_common.ModelTesterMixin
ConfigTester = test_configuration_common.ConfigTester
GenerationTesterMixin = test_modeling_common.GenerationTesterMixin

pytestmark = pytest.mark.slow


class VQVAEPriorModelTester:
    # 7: the batch of `test_eager_matches_sdpa_inference`, which would otherwise add rows of random ids (no prompt)
    def __init__(self, parent, batch_size=7, codebook_size=16, grid_size=(2, 3), num_classes=3, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.codebook_size = codebook_size
        self.grid_size = grid_size
        self.num_classes = num_classes
        self.is_training = is_training
        self.seq_length = 1 + grid_size[0] * grid_size[1]
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
        input_ids = mapping.codes_to_input_ids(codes, labels)
        return config, input_ids, mapping.codes_to_labels(codes)

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class VQVAEPriorModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (VQVAEPriorModel, VQVAEPriorForCausalLM)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is VQVAEPriorForCausalLM:
            # transformers adds labels for the causal LMs of its own mappings only; the prior's are its codes.
            config = self.model_tester.get_config()
            codes = VQVAEPriorCodeMapping.from_config(config).input_ids_to_codes(inputs_dict["input_ids"])
            inputs_dict["labels"] = VQVAEPriorCodeMapping.from_config(config).codes_to_labels(codes)
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

    def setUp(self):
        self.model_tester = VQVAEPriorModelTester(self)
        self.config_tester = ConfigTester(self, config_class=VQVAEPriorConfig, hidden_size=32)

    def test_config(self):
        self.config_tester.run_common_tests()
