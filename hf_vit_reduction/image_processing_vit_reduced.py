"""The image processor saved beside every ViTReduced model: timm's evaluation transform in Transformers' terms.

timm evaluates (`create_transform(is_training=False)`, crop mode "center") by resizing the shorter side to
floor(image_size / crop_pct) and cropping the centre image_size x image_size, with torchvision's `Resize` and
`CenterCrop`. Transformers' BiT processor resizes the same way (`size={"shortest_edge": N}`), but its centre crop
floors the offset where torchvision rounds it (half to even): on about a third of non-square photos the crop lands
one pixel away from evaluation's. The two classes here (Transformers' torchvision and PIL backends, picked by
`AutoImageProcessor` and `pipeline`) crop as torchvision does. They need only Transformers, so a Hub user without
timm loads them (remote code copies this file beside the model).
"""

import math

from transformers.image_utils import PILImageResampling
from transformers.models.bit.image_processing_bit import BitImageProcessor
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

# Remote code: one class per backend, as Transformers' own processors come.
AUTO_MAP = {
    "torchvision": "image_processing_vit_reduced.ViTReducedImageProcessor",
    "pil": "image_processing_vit_reduced.ViTReducedImageProcessorPil",
}


class _TimmEvaluation:
    """What both backends change in the BiT processor: torchvision's crop offsets, and both classes in `auto_map`."""

    _auto_class = "AutoImageProcessor"

    def center_crop(self, image, size, **kwargs):
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            # Smaller than the crop (crop_pct > 1): padded around the image, which is kept whole.
            return super().center_crop(image, size, **kwargs)
        top = round((height - size.height) / 2)  # torchvision's CenterCrop: rounded, not floored
        left = round((width - size.width) / 2)
        return image[..., top : top + size.height, left : left + size.width]

    def to_dict(self):
        # `save_pretrained` would record only this backend's class for remote code; users get the one they can run.
        return {**super().to_dict(), "auto_map": {"AutoImageProcessor": dict(AUTO_MAP)}}


class ViTReducedImageProcessor(_TimmEvaluation, BitImageProcessor):
    """timm's evaluation transform on the torchvision backend (Transformers' default where torchvision is installed)."""


class ViTReducedImageProcessorPil(_TimmEvaluation, BitImageProcessorPil):
    """timm's evaluation transform on the PIL backend."""


# timm's evaluation crop modes this processor reproduces: the shorter side resized (aspect kept), or both sides.
CROP_MODES = ("center", "squash")


def image_processor_for(
    image_size: int, *, crop_pct: float, interpolation: str, mean, std, crop_mode: str = "center"
) -> ViTReducedImageProcessor:
    """The processor reproducing timm's evaluation transform for these values (timm's names and defaults)."""
    if crop_mode not in CROP_MODES:
        raise ValueError(
            f"timm's crop mode {crop_mode!r} has no image processor here; allowed: {', '.join(CROP_MODES)}"
        )
    resized = math.floor(image_size / crop_pct)
    return ViTReducedImageProcessor(
        size={"shortest_edge": resized} if crop_mode == "center" else {"height": resized, "width": resized},
        crop_size={"height": image_size, "width": image_size},
        resample=PILImageResampling[interpolation.upper()],
        image_mean=list(mean),
        image_std=list(std),
    )
