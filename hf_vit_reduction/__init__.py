"""Parameter-reduced Vision Transformers (arXiv 2512.01059) as a 🤗 Transformers model."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification
from transformers.utils import is_vision_available

from .configuration_vit_reduced import PRESETS, REDUCTION_STRATEGIES, ViTReducedConfig
from .modeling_vit_reduced import (
    ViTReducedForImageClassification,
    ViTReducedModel,
    ViTReducedPreTrainedModel,
)
from .summary import summarize

AutoConfig.register(ViTReducedConfig.model_type, ViTReducedConfig, exist_ok=True)
AutoModel.register(ViTReducedConfig, ViTReducedModel, exist_ok=True)
AutoModelForImageClassification.register(ViTReducedConfig, ViTReducedForImageClassification, exist_ok=True)

__all__ = [
    "PRESETS",
    "REDUCTION_STRATEGIES",
    "ViTReducedConfig",
    "ViTReducedForImageClassification",
    "ViTReducedModel",
    "ViTReducedPreTrainedModel",
    "summarize",
]

if is_vision_available():  # the image processors need Pillow; the model itself does not
    from .image_processing_vit_reduced import ViTReducedImageProcessor, ViTReducedImageProcessorPil

    AutoImageProcessor.register(
        ViTReducedConfig,
        image_processor_classes={"torchvision": ViTReducedImageProcessor, "pil": ViTReducedImageProcessorPil},
        exist_ok=True,
    )
    __all__ += ["ViTReducedImageProcessor", "ViTReducedImageProcessorPil"]
