"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) run against `VQVAEModel`.

The mixins come from the installed transformers' sdist (see `transformers_common.py`), as transformers' own model
tests use them. Tests are skipped only where the feature does not exist for a convolutional VQ-VAE; each skip says why.
"""

import unittest

import pytest
from transformers_common import load_common_tests

from hf_vqvae import VQVAEConfig, VQVAEModel


test_modeling_common, test_configuration_common = load_common_tests()
ModelTesterMixin = test_modeling_common.ModelTesterMixin
floats_tensor = test_modeling_common.floats_tensor
ConfigTester = test_configuration_common.ConfigTester

pytestmark = pytest.mark.slow


class VQVAEModelTester:
    def __init__(self, parent, batch_size=2, num_channels=3, image_size=16, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.num_channels = num_channels
        self.image_size = image_size
        self.is_training = is_training

    def get_config(self) -> VQVAEConfig:
        return VQVAEConfig(
            num_channels=self.num_channels,
            image_size=self.image_size,
            hidden_channels=8,
            channel_multipliers=(1, 2),
            num_res_blocks=1,
            res_hidden_channels=8,
            codebook_size=16,
            codebook_dim=4,
        )

    def prepare_config_and_inputs(self):
        # floats in [0, 1) scaled to the model's [-1, 1] range
        shape = [self.batch_size, self.num_channels, self.image_size, self.image_size]
        pixel_values = floats_tensor(shape) * 2 - 1
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class VQVAEModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VQVAEModel,)
    # A convolutional VQ-VAE has no attention layers and no token embeddings (as transformers' Emu3/Janus VQ models).
    has_attentions = False
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = VQVAEModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=VQVAEConfig,
            has_text_modality=False,
            common_properties=["num_channels", "codebook_size", "codebook_dim", "hidden_channels"],
        )

    @unittest.skip(reason="A convolutional VQ-VAE has no hidden states (as transformers' Emu3/Janus VQ models)")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="A convolutional VQ-VAE has no hidden states or attentions to retain gradients of")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    @unittest.skip(reason="Runs `forward(output_hidden_states=True)`: a convolutional VQ-VAE has no hidden states")
    def test_model_outputs_equivalence(self):
        pass

    @unittest.skip(reason="A VQ-VAE takes pixels, not token ids: it has no input embeddings to get or set")
    def test_model_get_set_embeddings(self):
        pass

    def test_config(self):
        self.config_tester.run_common_tests()
