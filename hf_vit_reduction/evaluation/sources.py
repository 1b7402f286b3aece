"""What a user names as a model, turned into a classifier and its own preprocessing.

    RUN_OR_MODEL_FOLDER     a run's output_dir, best_model/, a converted or cut folder, any save_pretrained folder
    org/name                a Hub id (a local folder of that name wins): a Transformers image classifier, or a
                            timm repository (config.json with "architecture"), downloaded into the Hub cache
    timm:NAME               a timm model with the pretrained weights timm's registry names; NAME may carry a tag
    TIMM_FOLDER             a folder saved by timm (`timm.models.save_for_hf`: config.json with "architecture")
    hf-hub:ID, local-dir:P  timm's own prefixes: a Hub id or a folder of timm's layout

A Transformers model is preprocessed by the image processor saved with it; a timm model by its `pretrained_cfg`
(`timm.data.resolve_data_config` and `create_transform`). Every problem is a one-line ValueError naming the model,
raised before its weights are read where that can be known first.
"""

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, PILToTensor, Resize
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.image_utils import PILImageResampling
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

from .. import ViTReducedForImageClassification, summarize
from ..conversion.timm_vit import timm_label_names
from ..hub.locating import fetch_timm_pretrained, locate_model
from ..image_processing_vit_reduced import ViTReducedImageProcessor, ViTReducedImageProcessorPil
from ..training.builders import Normalize

TIMM_PREFIX = "timm:"
# The paper's Table 2 figures that only a ViTReduced model has (hf_vit_reduction.summary).
TABLE_2_KEYS = ("strategy", "mlp_parameters", "unique_mlps", "expansion_ratio")


@dataclass
class Classifier:
    """A model ready to score: `model(pixel_values=...)` returns `.logits`; `transform` turns an RGB PIL image into
    the loader's tensor and `normalize` turns a batch of those, on the device, into the model's input."""

    name: str  # as the user named it
    kind: str  # "ViTReduced (baseline)", "Transformers ViTForImageClassification", "timm vit_base_patch16_224"
    model: torch.nn.Module
    transform: Callable
    normalize: Callable
    preprocessing: str  # one line: what `transform` and `normalize` do
    label_names: list[str] | None  # the model's class names by index; None when it has none
    num_classes: int


class TimmClassifier(torch.nn.Module):
    """A timm model answering as a Transformers classifier does: `model(pixel_values=x).logits`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
        return ImageClassifierOutput(logits=self.model(pixel_values))


class ToFloat:
    """A batch already normalized by its image processor, as floats (placeholders of unreadable images are uint8)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()


class ProcessorTransform:
    """An RGB PIL image through the model's own image processor, as `pipeline("image-classification")` runs it."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def load_classifier(
    name: str, *, device: torch.device, revision: str | None = None, token: str | None = None
) -> Classifier:
    """The classifier and preprocessing `name` stands for (see the module's docstring), a Hub id read at
    `revision` with `token`; ValueError when none."""
    if name.startswith((TIMM_PREFIX, "local-dir:")):
        return load_timm(name.removeprefix(TIMM_PREFIX), name=name, device=device)
    if os.path.isfile(name):
        raise ValueError(
            f"model {name!r} is a file; allowed: a model folder (config.json and weights), a Hub id, timm:NAME, "
            "or a folder saved by timm"
        )
    located = locate_model(name.removeprefix("hf-hub:"), revision=revision, token=token, flag="model")
    config_path = os.path.join(located.folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(
            f"model {name!r} holds no config.json: not a saved model (a run folder holds its final model "
            "once the run has finished)"
        )
    if "architecture" in _read_json(config_path, name):  # timm's save_for_hf format, as the Hub's timm models
        return load_timm(f"local-dir:{located.folder}", name=name, device=device)
    if name.startswith("hf-hub:"):
        raise ValueError(f"model {name!r} is not a timm repository (its config.json names no architecture)")
    return load_transformers(located.folder, name=name, device=device)


def _read_json(path: str, name: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"model {name!r}: config.json is not JSON ({error})") from None


def load_transformers(folder: str, *, name: str, device: torch.device) -> Classifier:
    """A Transformers image classifier saved in `folder` (`name`: as the user named it), preprocessed by its saved
    image processor."""
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:  # not a Transformers config
        reason = str(error).splitlines()[0]
        raise ValueError(f"model {name!r} is neither a Transformers model nor a timm model: {reason}") from None
    if type(config) not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise ValueError(
            f"model {name!r} is a {config.model_type!r} model, not an image classifier; allowed: models that "
            "AutoModelForImageClassification loads"
        )
    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model {name!r} has no image processor saved with it ({str(error).splitlines()[0]}); it is scored "
            "through its own preprocessing"
        ) from None
    model = AutoModelForImageClassification.from_pretrained(folder).eval().to(device)
    transform, normalize, preprocessing = processor_preprocessing(processor, device=device)
    if isinstance(model, ViTReducedForImageClassification):
        kind = f"ViTReduced ({model.config.reduction_strategy})"
    else:
        kind = f"Transformers {type(model).__name__}"
    id2label = model.config.id2label
    return Classifier(
        name=name,
        kind=kind,
        model=model,
        transform=transform,
        normalize=normalize,
        preprocessing=preprocessing,
        label_names=[id2label[i] for i in range(model.config.num_labels)],
        num_classes=model.config.num_labels,
    )


def processor_preprocessing(processor, *, device: torch.device) -> tuple[Callable, Callable, str]:
    """(transform, normalize, description) for a saved image processor.

    This package's processor is timm's evaluation transform (`image_processing_vit_reduced`): it is run as
    training's validation runs it, torchvision's resize and centre crop to uint8 in the loader, then `Normalize` on
    the device, so a run folder scores the very pixels its run evaluated. Any other processor runs as is, image by
    image, as `pipeline("image-classification")` runs it.
    """
    if isinstance(processor, (ViTReducedImageProcessor, ViTReducedImageProcessorPil)):
        size, crop = processor.size, processor.crop_size
        resized = size["shortest_edge"] if "shortest_edge" in size else (size["height"], size["width"])
        interpolation = InterpolationMode[PILImageResampling(processor.resample).name]
        transform = Compose(
            [Resize(resized, interpolation=interpolation), CenterCrop((crop["height"], crop["width"])), PILToTensor()]
        )
        normalize = Normalize(processor.image_mean, processor.image_std, device=device)
        description = (
            f"resize {resized} ({interpolation.value}), centre crop {crop['height']}x{crop['width']}, mean "
            f"{_numbers(processor.image_mean)} std {_numbers(processor.image_std)} (timm's evaluation transform)"
        )
        return transform, normalize, description
    return ProcessorTransform(processor), ToFloat(), f"its image processor ({type(processor).__name__})"


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def load_timm(model_name: str, *, name: str, device: torch.device) -> Classifier:
    """A timm model with its weights, preprocessed by timm's evaluation transform of its pretrained_cfg."""
    import timm
    from timm.data import create_transform, resolve_data_config

    if not model_name.startswith("local-dir:"):
        registry_name = model_name.split(".")[0]
        if not timm.is_model(registry_name):
            close = difflib.get_close_matches(registry_name, timm.list_models(), n=5)
            raise ValueError(
                f"model {name!r}: {registry_name!r} is not a timm model name"
                + (f"; close names: {', '.join(close)}" if close else "; allowed: a name of timm.list_models()")
            )
        fetch_timm_pretrained(model_name, flag="model")
    try:
        model = timm.create_model(model_name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"model {name!r}: timm cannot load its weights "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None
    model = model.eval().to(device)
    config = resolve_data_config({}, model=model)
    transform = create_transform(**config, use_prefetcher=True)  # uint8: normalized on the device, as training
    return Classifier(
        name=name,
        kind=f"timm {model.pretrained_cfg.get('architecture', type(model).__name__)}",
        model=TimmClassifier(model),
        transform=transform,
        normalize=Normalize(config["mean"], config["std"], device=device),
        preprocessing=(
            f"timm's evaluation transform: input {config['input_size'][1]}x{config['input_size'][2]}, crop_pct "
            f"{config['crop_pct']} ({config['crop_mode']}), {config['interpolation']}, mean "
            f"{_numbers(config['mean'])} std {_numbers(config['std'])}"
        ),
        label_names=timm_label_names(model),
        num_classes=model.num_classes,
    )


def compute_figures(classifier: Classifier, input_shape: tuple[int, ...]) -> dict:
    """Parameters and GMACs per image, with the convention the GMACs are counted in.

    A ViTReduced model: `hf_vit_reduction.summary` (the paper's Table 2 convention, and its other columns). Any
    other: the multiply-adds
    of every matmul, convolution and attention product that `torch.utils.flop_counter.FlopCounterMode` counts (its
    FLOPs / 2) in one forward pass at the preprocessed size; norms, activations and softmax are not counted.
    """
    model = classifier.model
    parameters = sum(p.numel() for p in model.parameters())
    if isinstance(model, ViTReducedForImageClassification):
        summary = summarize(model)
        return {
            "parameters": parameters,
            "gmacs": summary["gmacs"],
            "gmacs_convention": "paper",
            **{key: summary[key] for key in TABLE_2_KEYS},
        }
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    # Attention through the math backend: its matmuls are counted on every device (the counter knows CUDA's fused
    # attention kernels but not the CPU's, which would leave attention out there).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.zeros(1, *input_shape, device=device))
    return {
        "parameters": parameters,
        "gmacs": counter.get_total_flops() / 2e9,
        "gmacs_convention": "flop_counter",
        **dict.fromkeys(TABLE_2_KEYS),
    }
