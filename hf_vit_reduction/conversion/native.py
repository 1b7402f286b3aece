"""A ViTReduced classifier as Transformers' own ViT or timm's VisionTransformer: folders that load without this
package and without remote code.

Baseline, shallow and thin are plain ViTs whose MLP has the kept width (`ViTConfig.intermediate_size`, timm's
`mlp_ratio`). A grouped model's shared MLP is written into each block of its group: the same function, at the
baseline's size on disk. Transformers' folder carries a `BitImageProcessor` with the model's preprocessing (the class
ViTReduced's own processor extends; see `transformers_image_processor` for the one difference); timm's folder
carries the preprocessing in its `pretrained_cfg`, which timm and Transformers' timm wrapper both read.
"""

import json
import math
from dataclasses import fields
from pathlib import Path

import torch
from transformers import PreTrainedConfig

from ..configuration_vit_reduced import ViTReducedConfig
from ..image_processing_vit_reduced import Preprocessing
from ..modeling_vit_reduced import ViTReducedForImageClassification
from .building import build_with_weights

NATIVE_FORMATS = ("transformers", "timm")

# ViTReducedConfig's fields that Transformers' ViTConfig has, with the same meaning.
VIT_CONFIG_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
)
# Fields that fix the MLP's width and sharing, which both formats hold as one MLP per block at the kept width.
MLP_FIELDS = ("intermediate_size", "reduction_strategy", "reduction_mlp_ratio", "mlp_share_group_size")
# Fields that change training only, by what each format does with them.
TRAINING_ONLY = {
    "transformers": {"drop_path_rate": "Transformers' ViT has no stochastic depth"},
    "timm": {
        name: "timm's exports leave drop rates to the run that loads them"
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
    },
}
# The fields each format writes; every other field of ViTReducedConfig must have its default value, so that an
# option the model gains later is refused here until a format is taught to write it.
WRITTEN_FIELDS = {
    "transformers": (*VIT_CONFIG_FIELDS, *MLP_FIELDS, *TRAINING_ONLY["transformers"]),
    "timm": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "hidden_act",
        "image_size",
        "patch_size",
        "num_channels",
        "qkv_bias",
        "layer_norm_eps",  # checked below: timm's ViT builds its LayerNorms with eps 1e-6
        "initializer_range",  # initialization only; the weights are loaded
        *MLP_FIELDS,
        *TRAINING_ONLY["timm"],
    ),
}
# timm's activation names (`get_act_layer`) for Transformers' activation names of the same function.
TIMM_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
    "relu": "relu",
}
TIMM_LAYER_NORM_EPS = 1e-6
# timm's plain ViT factories by (width, depth, heads); any other shape is built by vit_base's with its model_args.
TIMM_SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large"}


class UnrepresentableError(ValueError):
    """A model that a native format cannot hold; the message names the fields and values."""


def check_representable(config: ViTReducedConfig, format: str) -> None:
    """Raise `UnrepresentableError` naming every field of `config` that `format` cannot write."""
    base = {field.name for field in fields(PreTrainedConfig)}
    problems = [
        f"{field.name}={getattr(config, field.name)!r} (the default is {field.default!r})"
        for field in fields(config)
        if field.name not in base
        and field.name not in WRITTEN_FIELDS[format]
        and getattr(config, field.name) != field.default
    ]
    if format == "timm":
        if config.hidden_act not in TIMM_ACTIVATIONS:
            problems.append(f"hidden_act={config.hidden_act!r} (timm's ViT: {', '.join(TIMM_ACTIVATIONS)})")
        if config.layer_norm_eps != TIMM_LAYER_NORM_EPS:
            problems.append(
                f"layer_norm_eps={config.layer_norm_eps!r} (timm's ViT builds its LayerNorms with eps 1e-6; "
                "Transformers' ViTConfig holds any eps)"
            )
    if problems:
        raise UnrepresentableError(f"--format {format} cannot represent {'; '.join(problems)}")


def training_only_notes(config: ViTReducedConfig, format: str) -> list[str]:
    """One line per field set away from its default that `format` does not carry; inference is unchanged."""
    defaults = {field.name: field.default for field in fields(ViTReducedConfig)}
    return [
        f"{name}={getattr(config, name)!r} is not carried ({reason}); inference is unchanged"
        for name, reason in TRAINING_ONLY[format].items()
        if getattr(config, name) != defaults[name]
    ]


def shared_mlp_note(config: ViTReducedConfig) -> str | None:
    """The line a grouped model's export says; None for the other strategies."""
    if config.reduction_strategy != "grouped":
        return None
    return (
        f"grouped: each block holds its own copy of its group's shared MLP (blocks of {config.mlp_share_group_size}), "
        "the same function at the baseline's size on disk; training this folder unties the copies"
    )


def _encoder_weights(model: ViTReducedForImageClassification) -> dict[str, torch.Tensor]:
    """The model's weights as separate tensors; `state_dict` lists a shared MLP under each of its blocks."""
    with torch.no_grad():
        return {key: value.detach().clone() for key, value in model.state_dict().items()}


def to_transformers(model: ViTReducedForImageClassification):
    """Transformers' `ViTForImageClassification` computing what `model` computes (in eval mode)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = model.config
    check_representable(config, "transformers")
    vit_config = ViTConfig(
        **{name: getattr(config, name) for name in VIT_CONFIG_FIELDS},
        intermediate_size=config.mlp_hidden_size,
        encoder_stride=config.patch_size,
        id2label=dict(config.id2label),
        **({"label2id": dict(config.label2id)} if config.label2id else {}),
        problem_type=config.problem_type,
    )
    ours = _encoder_weights(model)
    theirs = {
        "vit.embeddings.cls_token": ours["vit.embeddings.cls_token"],
        "vit.embeddings.position_embeddings": ours["vit.embeddings.position_embeddings"],
        "vit.embeddings.patch_embeddings.projection.weight": ours["vit.embeddings.projection.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": ours["vit.embeddings.projection.bias"],
        "vit.layernorm.weight": ours["vit.layernorm.weight"],
        "vit.layernorm.bias": ours["vit.layernorm.bias"],
    }
    for index in range(config.num_hidden_layers):
        prefix = f"vit.layers.{index}."
        for projection, weight in zip(("q_proj", "k_proj", "v_proj"), ours[prefix + "attention.qkv.weight"].chunk(3)):
            theirs[f"{prefix}attention.{projection}.weight"] = weight.clone()
        if config.qkv_bias:
            for projection, bias in zip(("q_proj", "k_proj", "v_proj"), ours[prefix + "attention.qkv.bias"].chunk(3)):
                theirs[f"{prefix}attention.{projection}.bias"] = bias.clone()
        for their_name, our_name in (
            ("attention.o_proj", "attention.proj"),
            ("layernorm_before", "layernorm_before"),
            ("layernorm_after", "layernorm_after"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            for part in ("weight", "bias"):
                theirs[f"{prefix}{their_name}.{part}"] = ours[f"{prefix}{our_name}.{part}"]
    if config.num_labels > 0:
        theirs["classifier.weight"], theirs["classifier.bias"] = ours["classifier.weight"], ours["classifier.bias"]
    return build_with_weights(ViTForImageClassification, vit_config, theirs)


def transformers_image_processor(preprocessing: Preprocessing):
    """Transformers' `BitImageProcessor` with `preprocessing`'s values: the class ViTReduced's processor extends, so
    the resize, rescale and normalization are the same code. Its centre crop floors the offset where timm's evaluation
    (torchvision's `CenterCrop`) and ViTReduced's processor round it, half to even: where the resized image exceeds
    the crop by 3 (mod 4) pixels along a side, the crop lands one pixel nearer the top or left edge."""
    from transformers import BitImageProcessor
    from transformers.image_utils import PILImageResampling

    image_size, resized = preprocessing.image_size, math.floor(preprocessing.image_size / preprocessing.crop_pct)
    return BitImageProcessor(
        size={"shortest_edge": resized}
        if preprocessing.crop_mode == "center"
        else {"height": resized, "width": resized},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=preprocessing.crop_mode == "center" or resized != image_size,
        resample=PILImageResampling[preprocessing.interpolation.upper()],
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
    )


def _timm_mlp_ratio(width: int, hidden_size: int) -> float:
    """timm's `mlp_ratio` for an MLP of `width` units: int(hidden_size * ratio) must give `width` back, which
    width / hidden_size can miss by a float rounding."""
    ratio = width / hidden_size
    while int(hidden_size * ratio) < width:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def timm_model_args(config: ViTReducedConfig) -> tuple[str, dict]:
    """(timm's architecture name, its `model_args`) for a model of `config`, without `num_classes`, which
    Transformers' timm wrapper passes on its own."""
    import timm

    size = TIMM_SIZES.get((config.hidden_size, config.num_hidden_layers, config.num_attention_heads))
    architecture = f"vit_{size}_patch{config.patch_size}_{config.image_size}"
    if size is None or not timm.is_model(architecture):
        architecture = "vit_base_patch16_224"
    model_args = {
        "img_size": config.image_size,
        "patch_size": config.patch_size,
        "in_chans": config.num_channels,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": _timm_mlp_ratio(config.mlp_hidden_size, config.hidden_size),
        "qkv_bias": config.qkv_bias,
        "global_pool": "token",
    }
    if config.hidden_act != "gelu":  # timm's ViT default
        model_args["act_layer"] = TIMM_ACTIVATIONS[config.hidden_act]
    return architecture, model_args


def to_timm(model: ViTReducedForImageClassification, preprocessing: Preprocessing | None = None):
    """timm's `VisionTransformer` computing what `model` computes (in eval mode), its `pretrained_cfg` carrying
    `preprocessing` (timm's evaluation settings) and the labels."""
    import timm

    config = model.config
    check_representable(config, "timm")
    architecture, model_args = timm_model_args(config)
    pretrained_cfg = {
        "input_size": (config.num_channels, config.image_size, config.image_size),
        "fixed_input_size": True,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "num_classes": config.num_labels,
    }
    if preprocessing is not None:
        pretrained_cfg |= {
            "crop_pct": preprocessing.crop_pct,
            "crop_mode": preprocessing.crop_mode,
            "interpolation": preprocessing.interpolation,
            "mean": tuple(preprocessing.mean),
            "std": tuple(preprocessing.std),
        }
    native = timm.create_model(
        architecture, pretrained=False, pretrained_cfg=pretrained_cfg, num_classes=config.num_labels, **model_args
    )
    ours = _encoder_weights(model)
    theirs = {
        "cls_token": ours["vit.embeddings.cls_token"],
        "pos_embed": ours["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": ours["vit.embeddings.projection.weight"],
        "patch_embed.proj.bias": ours["vit.embeddings.projection.bias"],
        "norm.weight": ours["vit.layernorm.weight"],
        "norm.bias": ours["vit.layernorm.bias"],
    }
    for index in range(config.num_hidden_layers):
        prefix, block = f"vit.layers.{index}.", f"blocks.{index}."
        for their_name, our_name in (
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
            ("attn.qkv", "attention.qkv"),
            ("attn.proj", "attention.proj"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            for part in ("weight", "bias"):
                if f"{prefix}{our_name}.{part}" in ours:  # qkv has no bias without qkv_bias
                    theirs[f"{block}{their_name}.{part}"] = ours[f"{prefix}{our_name}.{part}"]
    if config.num_labels > 0:
        theirs["head.weight"], theirs["head.bias"] = ours["classifier.weight"], ours["classifier.bias"]
    native.load_state_dict(theirs, strict=True)
    return native.to(model.dtype).eval()


def save_timm(native, folder: Path, config: ViTReducedConfig) -> None:
    """Write `native` in timm's Hub layout (config.json, model.safetensors) with `config`'s labels.

    timm's `save_for_hf` also writes `num_classes` into `model_args`, where Transformers' timm wrapper then passes it
    twice ("got multiple values for keyword argument 'num_classes'"): it is removed; `num_classes` stays at the top
    level, where both read it.
    """
    from timm.models import save_for_hf

    labels = [config.id2label[index] for index in range(config.num_labels)]
    save_for_hf(native, folder, model_config={"label_names": labels} if labels else None, safe_serialization=True)
    path = Path(folder) / "config.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved["model_args"].pop("num_classes", None)
    path.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
