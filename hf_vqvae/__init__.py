"""hf_vqvae: the VQ-VAE of van den Oord et al. (2017, arXiv:1711.00937) as a Hugging Face-native package.

Importing the package registers its classes with transformers' Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForCausalLM`, `AutoImageProcessor`), and marks them for `trust_remote_code` so that `save_pretrained`
folders carry their code.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoModel, AutoModelForCausalLM
from transformers.pipelines import PIPELINE_REGISTRY

from .anomaly import (
    NearestNeighborBaseline,
    PCABaseline,
    VQVAEAnomalyOutput,
    VQVAEAnomalyScorer,
    anomaly_metrics,
    compression_bits,
    corrupt_codes,
    localization_metrics,
    make_synthetic_defects,
    make_synthetic_outliers,
    render_anomaly_heatmap,
    select_score,
)
from .configuration_pixelcnn_prior import VQVAEPixelCNNPriorConfig
from .configuration_vqvae import VQVAEAudioConfig, VQVAEConfig
from .configuration_vqvae_prior import VQVAEPriorConfig
from .feature_extraction_vqvae import VQVAEFeatureExtractor
from .image_processing_vqvae import VQVAEImageProcessor
from .modeling_pixelcnn_prior import (
    VQVAEPixelCNNPriorModel,
    VQVAEPixelCNNPriorOutput,
    VQVAEPixelCNNPriorPreTrainedModel,
)
from .modeling_vqvae import (
    VQVAEAudioModel,
    VQVAEDecoderOutput,
    VQVAEEncoderOutput,
    VQVAEModel,
    VQVAEModelOutput,
    VQVAEPreTrainedModel,
)
from .modeling_vqvae_prior import (
    VQVAEPriorCodeMapping,
    VQVAEPriorForCausalLM,
    VQVAEPriorModel,
    VQVAEPriorPreTrainedModel,
)
from .pipelines import VQVAEAnomalyPipeline, VQVAEGenerationPipeline, VQVAEReconstructionPipeline
from .quantizer import QuantizerOutput, VectorQuantizer
from .tokenization_vqvae import VQVAEImageTokenizer


__version__ = "0.1.0"

AutoConfig.register(VQVAEConfig.model_type, VQVAEConfig, exist_ok=True)
AutoModel.register(VQVAEConfig, VQVAEModel, exist_ok=True)
AutoImageProcessor.register(VQVAEConfig, image_processor_classes={"pil": VQVAEImageProcessor}, exist_ok=True)
AutoConfig.register(VQVAEAudioConfig.model_type, VQVAEAudioConfig, exist_ok=True)
AutoModel.register(VQVAEAudioConfig, VQVAEAudioModel, exist_ok=True)
AutoFeatureExtractor.register(VQVAEAudioConfig, VQVAEFeatureExtractor, exist_ok=True)
AutoConfig.register(VQVAEPriorConfig.model_type, VQVAEPriorConfig, exist_ok=True)
AutoModel.register(VQVAEPriorConfig, VQVAEPriorModel, exist_ok=True)
AutoModelForCausalLM.register(VQVAEPriorConfig, VQVAEPriorForCausalLM, exist_ok=True)
# The gated PixelCNN prior is not a language model: `AutoModel`.
AutoConfig.register(VQVAEPixelCNNPriorConfig.model_type, VQVAEPixelCNNPriorConfig, exist_ok=True)
AutoModel.register(VQVAEPixelCNNPriorConfig, VQVAEPixelCNNPriorModel, exist_ok=True)
# `save_pretrained` then copies the modeling files and writes `auto_map`, so that a saved folder loads with
# `trust_remote_code=True` where hf_vqvae is not installed.
VQVAEConfig.register_for_auto_class()
VQVAEModel.register_for_auto_class("AutoModel")
VQVAEAudioConfig.register_for_auto_class()
VQVAEAudioModel.register_for_auto_class("AutoModel")
VQVAEImageProcessor.register_for_auto_class("AutoImageProcessor")
VQVAEFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
VQVAEPriorConfig.register_for_auto_class()
VQVAEPriorForCausalLM.register_for_auto_class("AutoModelForCausalLM")
VQVAEPixelCNNPriorConfig.register_for_auto_class()
VQVAEPixelCNNPriorModel.register_for_auto_class("AutoModel")
# `pipeline("vqvae-reconstruction", model=vqvae_folder)` and `pipeline("vqvae-generation", model=prior_folder)`
# (either prior: a transformer prior loads as `AutoModelForCausalLM`, a PixelCNN prior as `AutoModel`).
PIPELINE_REGISTRY.register_pipeline(
    "vqvae-reconstruction", pipeline_class=VQVAEReconstructionPipeline, pt_model=AutoModel, type="image"
)
PIPELINE_REGISTRY.register_pipeline(
    "vqvae-generation",
    pipeline_class=VQVAEGenerationPipeline,
    pt_model=(AutoModelForCausalLM, AutoModel),
    type="image",
)
# `pipeline("vqvae-anomaly", model=vqvae_folder, prior=prior_folder)`: anomaly scores and heat maps.
PIPELINE_REGISTRY.register_pipeline(
    "vqvae-anomaly", pipeline_class=VQVAEAnomalyPipeline, pt_model=AutoModel, type="image"
)

__all__ = [
    "NearestNeighborBaseline",
    "PCABaseline",
    "QuantizerOutput",
    "VQVAEAnomalyOutput",
    "VQVAEAnomalyPipeline",
    "VQVAEAnomalyScorer",
    "VQVAEAudioConfig",
    "VQVAEAudioModel",
    "VQVAEConfig",
    "VQVAEDecoderOutput",
    "VQVAEEncoderOutput",
    "VQVAEFeatureExtractor",
    "VQVAEGenerationPipeline",
    "VQVAEImageProcessor",
    "VQVAEImageTokenizer",
    "VQVAEModel",
    "VQVAEModelOutput",
    "VQVAEPixelCNNPriorConfig",
    "VQVAEPixelCNNPriorModel",
    "VQVAEPixelCNNPriorOutput",
    "VQVAEPixelCNNPriorPreTrainedModel",
    "VQVAEPreTrainedModel",
    "VQVAEPriorCodeMapping",
    "VQVAEPriorConfig",
    "VQVAEPriorForCausalLM",
    "VQVAEPriorModel",
    "VQVAEPriorPreTrainedModel",
    "VQVAEReconstructionPipeline",
    "VectorQuantizer",
    "__version__",
    "anomaly_metrics",
    "compression_bits",
    "corrupt_codes",
    "localization_metrics",
    "make_synthetic_defects",
    "make_synthetic_outliers",
    "render_anomaly_heatmap",
    "select_score",
]
