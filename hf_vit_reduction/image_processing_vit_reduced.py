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
from dataclasses import asdict, dataclass, fields

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
# PIL's resampling filters by timm's interpolation names (timm's `str_to_interp_mode` knows the same six).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of an image, in timm's evaluation terms: resize to floor(image_size / crop_pct) (the
    shorter side for crop_mode "center", both sides for "squash"), centre crop image_size, divide by 255,
    normalize with mean and std."""

    image_size: int
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def image_processor(self) -> "ViTReducedImageProcessor":
        return image_processor_for(
            self.image_size,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_mode=self.crop_mode,
        )

    def as_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


# The values a run records for its preprocessing, each with its source (args.json, the card).
PREPROCESSING_FIELDS = tuple(field.name for field in fields(Preprocessing))


def _side(size: dict, field: str, where: str) -> int:
    height, width = size.get("height"), size.get("width")
    if height != width:
        raise ValueError(f"{where} has {field}={size}; allowed: a square size (ViTReduced takes square images)")
    return int(height)


def _crop_pct(image_size: int, resized: int) -> float:
    """timm's crop_pct for a resize to `resized` before a crop of `image_size`: floor(image_size / crop_pct) must
    give `resized` back, which image_size / resized can miss by a float rounding."""
    crop_pct = image_size / resized
    while math.floor(image_size / crop_pct) < resized:
        crop_pct = math.nextafter(crop_pct, 0)
    return crop_pct


def preprocessing_of(processor, where: str = "the image processor") -> Preprocessing:
    """The preprocessing a saved image processor applies (ours, Transformers' ViT, DeiT, BiT or CLIP processors,
    or any with their fields), or a ValueError naming the field it cannot be expressed by.

    ViT's processor squashes to `size` (crop_pct 1); DeiT's squashes to `size` and crops `crop_size` (crop_mode
    "squash", crop_pct = crop / size); BiT's, CLIP's and ours resize the shorter side to `size["shortest_edge"]`
    and crop (crop_mode "center").
    """
    saved = processor if isinstance(processor, dict) else processor.to_dict()
    if not saved.get("do_resize", True):
        raise ValueError(f"{where} has do_resize=False; allowed: a processor that resizes to the model's size")
    if saved.get("do_rescale", True) is False or not math.isclose(saved.get("rescale_factor", 1 / 255), 1 / 255):
        raise ValueError(
            f"{where} has do_rescale={saved.get('do_rescale')}, rescale_factor={saved.get('rescale_factor')}; "
            "allowed: pixel values divided by 255"
        )
    size = dict(saved.get("size") or {})
    cropped = bool(saved.get("do_center_crop", False))
    if size.get("shortest_edge") and set(size) == {"shortest_edge"}:
        if not cropped:
            raise ValueError(
                f"{where} resizes the shorter side without a centre crop (do_center_crop=False), which gives "
                "non-square images; allowed: do_center_crop=True"
            )
        crop_mode, resized = "center", int(size["shortest_edge"])
    elif set(size) == {"height", "width"}:
        crop_mode, resized = "squash", _side(size, "size", where)
    else:
        raise ValueError(f"{where} has size={size}; allowed: {{'shortest_edge': N}} or {{'height': N, 'width': N}}")
    image_size = _side(dict(saved["crop_size"]), "crop_size", where) if cropped else resized
    resample = saved.get("resample", PILImageResampling.BILINEAR)
    interpolation = PILImageResampling(resample).name.lower()
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"{where} has resample={resample}; allowed: {', '.join(INTERPOLATIONS)}")
    channels = len(saved.get("image_mean") or (0, 0, 0))
    normalized = saved.get("do_normalize", True)
    mean = tuple(float(v) for v in saved["image_mean"]) if normalized else (0.0,) * channels
    std = tuple(float(v) for v in saved["image_std"]) if normalized else (1.0,) * channels
    return Preprocessing(
        image_size=image_size,
        crop_pct=_crop_pct(image_size, resized),
        crop_mode=crop_mode,
        interpolation=interpolation,
        mean=mean,
        std=std,
    )


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
        # Squashed to the crop's size already (Transformers' ViT processor): nothing to crop.
        do_center_crop=crop_mode == "center" or resized != image_size,
        resample=PILImageResampling[interpolation.upper()],
        image_mean=list(mean),
        image_std=list(std),
    )
