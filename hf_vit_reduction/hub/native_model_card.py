"""Model cards (README.md) for folders exported in Transformers' or timm's own format (`hf-vit-reduction export
--format transformers|timm`): how to load them without this package, and where the ViTReduced model is."""

from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..configuration_vit_reduced import ViTReducedConfig
from ..image_processing_vit_reduced import Preprocessing
from ..summary import summarize
from .model_card import STRATEGY_DESCRIPTIONS, TAGS, _strategy_parameter, preprocessing_steps

TEMPLATE = "native_model_card.md"
ARCHITECTURES = {
    "transformers": "🤗 Transformers' `ViTForImageClassification`",
    "timm": "timm's `VisionTransformer`",
}
LIBRARIES = {"transformers": "🤗 Transformers", "timm": "timm (or 🤗 Transformers with timm installed)"}
PREPROCESSING_ORIGINS = {
    "transformers": "What the saved `BitImageProcessor` does (`AutoImageProcessor`, and `pipeline` through it): the "
    "ViTReduced model's evaluation transform, but for the centre crop's offset, which it floors where the ViTReduced "
    "processor (as torchvision's `CenterCrop`) rounds: on images whose resized side exceeds the crop by 3 pixels "
    "(mod 4), the crop lands one pixel nearer the top or left edge.",
    "timm": "What timm's evaluation transform does with this folder's `pretrained_cfg` (`create_transform`, and "
    "Transformers' timm wrapper through it): the ViTReduced model's evaluation transform.",
}


def render_native_model_card(
    config: ViTReducedConfig,
    format: str,
    *,
    source: str,
    num_parameters: int,
    location: str,
    repo_id: str | None = None,
    preprocessing: Preprocessing | None = None,
    processor: dict | None = None,
    notes: tuple[str, ...] = (),
    license: str = "apache-2.0",
) -> ModelCard:
    """The card of a model of `config` exported in `format` from the ViTReduced model `source` (a folder or a Hub
    id). `num_parameters` is the exported model's count; `location` is where the snippets load it from (`repo_id`
    once pushed); `processor` is the saved image processor's dict (for the preprocessing table) or, for timm, the
    processor that reproduces `preprocessing`; `notes` are the export's lines about fields not carried."""
    strategy = config.reduction_strategy or "baseline"
    card_data = ModelCardData(
        library_name=format,
        pipeline_tag="image-classification",
        license=license,
        tags=[*TAGS, strategy],
        model_name=(repo_id or Path(location).resolve().name).split("/")[-1],
    )
    location = repo_id or location
    return ModelCard.from_template(
        card_data,
        template_str=resources.files(__package__).joinpath("templates", TEMPLATE).read_text(encoding="utf-8"),
        model_name=card_data.model_name,
        format=format,
        architecture=ARCHITECTURES[format],
        library=LIBRARIES[format],
        source=source,
        location=location,
        repo_id=repo_id,
        timm_location=f"hf-hub:{repo_id}" if repo_id else f"local-dir:{location}",
        strategy=strategy,
        strategy_description=STRATEGY_DESCRIPTIONS[strategy],
        strategy_parameter=_strategy_parameter(config),
        cost=summarize(config),
        num_parameters=num_parameters,
        shared_mlp=strategy == "grouped",
        group_size=config.mlp_share_group_size,
        notes=list(notes),
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_labels=config.num_labels,
        preprocessing=preprocessing_steps(processor) if processor else None,
        preprocessing_origin=PREPROCESSING_ORIGINS[format],
    )
