"""What a run starting from a saved model (`--model_name_or_path`) takes from it: its preprocessing.

The starting model's saved image processor is the truth about what it expects (ImageNet's normalization and a
resize to 256 then a 224 crop for a DeiT, 0.5 and a squash for Google's ViTs, ...). Its resize, crop, interpolation,
normalization and image size become the run's, recorded with the source "starting model"; a flag the user gave
keeps its value and its source. Training (the normalization on the device), evaluation, top-1 before recovery, the
saved processor and the card then all use them.
"""

import dataclasses

from ..hub.locating import LocatedModel, locate_model
from ..image_processing_vit_reduced import PREPROCESSING_FIELDS, Preprocessing, preprocessing_of
from .config import FLAG, RunConfig

STARTING_MODEL = "starting model"
TIMM_DEFAULT = "timm's evaluation default"


def locate_starting_model(config: RunConfig) -> LocatedModel:
    """Where --model_name_or_path is: its folder, or the Hub id at --revision downloaded into the cache (read with
    --hub_token, else HF_TOKEN); a ValueError in one line when it cannot be had."""
    return locate_model(
        config.model_name_or_path, revision=config.revision, token=config.hub_token, flag="--model_name_or_path"
    )


def saved_preprocessing(folder: str, *, name: str) -> Preprocessing | None:
    """The preprocessing of the image processor saved with the model in `folder` (`name`: as the user named it);
    None where it has none. One it cannot express is a ValueError naming the field."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError):
        return None
    return preprocessing_of(processor, where=f"--model_name_or_path={name!r}'s image processor")


def with_starting_preprocessing(config: RunConfig) -> RunConfig:
    """`config` with the starting model's preprocessing in every field no flag set (source "starting model")."""
    if not config.model_name_or_path:
        return config
    preprocessing = saved_preprocessing(locate_starting_model(config).folder, name=config.model_name_or_path)
    if preprocessing is None:
        return config
    taken = {
        field: getattr(preprocessing, field)
        for field in PREPROCESSING_FIELDS
        if not (config.sources.get(field) == FLAG or (field == "image_size" and config.image_size is not None))
    }
    return dataclasses.replace(config, **taken, sources={**config.sources, **dict.fromkeys(taken, STARTING_MODEL)})


def run_preprocessing(config: RunConfig, image_size: int) -> Preprocessing:
    """The run's preprocessing at the model's `image_size`."""
    return Preprocessing(
        image_size=image_size,
        crop_pct=config.crop_pct,
        crop_mode=config.crop_mode,
        interpolation=config.interpolation,
        mean=tuple(config.mean),
        std=tuple(config.std),
    )
