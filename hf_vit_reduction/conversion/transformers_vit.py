"""🤗 Transformers' ViT family (ViT, DeiT, DINOv2, CLIP's vision tower) -> a baseline ViTReduced with the same
outputs."""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..configuration_vit_reduced import ViTReducedConfig
from ..loading_vit_reduced import describe_key_problems
from ..modeling_vit_reduced import ViTReducedForImageClassification
from .building import build_with_weights


def _square(value, field: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(
                f"{field}={tuple(value)} is not square; ViTReduced supports square images and patches only"
            )
        value = value[0]
    return int(value)


@dataclass(frozen=True)
class _Family:
    """How a Transformers ViT-family class maps onto ViTReduced: its encoder's attribute, the names of its weights
    (ours, encoder-relative, as regular expressions -> theirs), its heads, its config's options, the weights it has
    that compute nothing at inference, and whether its class token's position embedding is ours to fold into the
    class token (its registers follow an embedded class token; ours, with `no_embed_class`, embed the patches only)."""

    encoder: str | None  # the encoder's attribute (`vit`, `deit`), None for an encoder class
    renames: tuple[tuple[str, str], ...]
    heads: dict[str, str]  # our head -> theirs
    options: Callable[[object], dict] = lambda config: {}
    unused: tuple[str, ...] = ()  # their weights that no forward without masking uses
    folds_class_position: bool = False


_VIT_RENAMES = (
    (r"embeddings\.projection\.", "embeddings.patch_embeddings.projection."),
    (r"layers\.(\d+)\.attention\.proj\.", r"layers.\1.attention.o_proj."),
    (r"(.*)", r"\1"),
)
_DEIT_RENAMES = ((r"embeddings\.register_tokens", "embeddings.distillation_token"), *_VIT_RENAMES)
_DINOV2_RENAMES = (
    (r"embeddings\.projection\.", "embeddings.patch_embeddings.projection."),
    (r"layers\.(\d+)\.layernorm_before\.", r"encoder.layer.\1.norm1."),
    (r"layers\.(\d+)\.layernorm_after\.", r"encoder.layer.\1.norm2."),
    (r"layers\.(\d+)\.attention\.proj\.", r"encoder.layer.\1.attention.o_proj."),
    (r"layers\.(\d+)\.layer_scale(\d)\.gamma", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"(.*)", r"\1"),
)
_CLIP_RENAMES = (
    (r"embeddings\.cls_token", "embeddings.class_embedding"),
    (r"embeddings\.position_embeddings", "embeddings.position_embedding.weight"),
    (r"embeddings\.projection\.", "embeddings.patch_embedding."),
    (r"pre_layernorm\.", "pre_layrnorm."),
    (r"layers\.(\d+)\.layernorm_before\.", r"encoder.layers.\1.layer_norm1."),
    (r"layers\.(\d+)\.layernorm_after\.", r"encoder.layers.\1.layer_norm2."),
    (r"layers\.(\d+)\.attention\.proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"layers\.(\d+)\.", r"encoder.layers.\1."),
    (r"layernorm\.", "post_layernorm."),
)


def _dinov2_options(config) -> dict:
    return {
        "intermediate_size": int(config.hidden_size * config.mlp_ratio),
        "layer_scale_init_value": config.layerscale_value,
        "drop_path_rate": config.drop_path_rate,
    }


# Source class name -> how it maps. DeiTForImageClassification reads the class token only: its distillation token
# is a prefix token no head reads, which ViTReduced calls a register token (with a position embedding, as DeiT's).
_FAMILIES = {
    "ViTForImageClassification": _Family("vit", _VIT_RENAMES, {"classifier": "classifier"}),
    "ViTModel": _Family(None, _VIT_RENAMES, {}),
    "DeiTForImageClassification": _Family(
        "deit", _DEIT_RENAMES, {"classifier": "classifier"}, lambda config: {"num_register_tokens": 1}
    ),
    "DeiTForImageClassificationWithTeacher": _Family(
        "deit",
        _VIT_RENAMES,
        {"classifier": "cls_classifier", "distillation_classifier": "distillation_classifier"},
        lambda config: {"distillation_token": True},
    ),
    "Dinov2Model": _Family(None, _DINOV2_RENAMES, {}, _dinov2_options, unused=("embeddings.mask_token",)),
    "Dinov2WithRegistersModel": _Family(
        None,
        _DINOV2_RENAMES,
        {},
        lambda config: {
            **_dinov2_options(config),
            "num_register_tokens": config.num_register_tokens,
            "no_embed_class": True,
        },
        unused=("embeddings.mask_token",),
        folds_class_position=True,
    ),
    # CLIP's post_layernorm acts on the pooled class token only: fc_norm.
    "CLIPVisionModel": _Family(None, _CLIP_RENAMES, {}, lambda config: {"pre_norm": True, "fc_norm": True}),
}
# What a converted model's logits equal in the source's output: its logits, else its pooled features (DINOv2's final
# class token, CLIP's normed class token), else (a ViTModel, whose pooler is dropped) the final class token.
_POOLED_OUTPUTS = ("Dinov2Model", "Dinov2WithRegistersModel", "CLIPVisionModel")


def reference_output(source, pixels: torch.Tensor) -> torch.Tensor:
    """What `from_transformers(source)`'s logits equal on `pixels`."""
    output = source(pixels)
    if hasattr(output, "logits"):
        return output.logits
    if type(source).__name__ in _POOLED_OUTPUTS:
        return output.pooler_output
    return output.last_hidden_state[:, 0]


def from_transformers(model_or_path, drop_pooler: bool = False):
    """A baseline ViTReduced with the weights of a 🤗 Transformers ViT-family model: `ViTForImageClassification`,
    `ViTModel`, `DeiTForImageClassification(WithTeacher)`, `Dinov2Model`, `Dinov2WithRegistersModel` or
    `CLIPVisionModel`.

    `model_or_path` is a model or a local folder (v5 key names or the legacy ones that `save_pretrained` writes by
    default). LayerNorm eps, activation, dropouts, labels, image and patch size are copied; LayerScale, registers,
    the distillation token and head, CLIP's pre-norm and pooled-token norm become the config's options. An encoder
    class becomes a model without classifier (`num_labels=0`) whose logits are its pooled output (a `ViTModel`'s
    final class token). A `ViTModel`'s pooler (dense + tanh) has no counterpart here: it is an error unless
    `drop_pooler=True`. Attention runs through this model's default implementation (sdpa), which agrees with eager
    to float rounding.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        source = load_transformers_folder(model_or_path)
    else:
        source = model_or_path
    family = _FAMILIES.get(type(source).__name__)
    if family is None:
        raise TypeError(
            f"model_or_path is a {type(source).__name__}; allowed: {', '.join(_FAMILIES)}, or a local folder "
            "holding one"
        )
    encoder = getattr(source, family.encoder) if family.encoder else source
    if "embeddings.mask_token" in encoder.state_dict() and "embeddings.mask_token" not in family.unused:
        raise ValueError("the source has a mask token (masked image modeling), which ViTReduced cannot represent")
    if getattr(encoder, "pooler", None) is not None and not drop_pooler:
        raise ValueError(
            "the source ViTModel has a pooler (dense + tanh on the CLS token), which ViTReduced does not have; "
            "pass drop_pooler=True to convert the encoder without it (ViTForImageClassification ignores it too)"
        )
    if getattr(source.config, "use_swiglu_ffn", False):
        raise ValueError("the source has SwiGLU MLPs (use_swiglu_ffn=True), which ViTReduced cannot represent")
    config = ViTReducedConfig(**_transformers_fields(source.config, family, has_heads=bool(family.heads)))
    state = _transformers_state_to_ours(source, encoder, family, config, drop_pooler=drop_pooler)
    return build_with_weights(ViTReducedForImageClassification, config, state)


def _transformers_fields(source_config, family: _Family, has_heads: bool) -> dict:
    """ViTReduced's config fields from a Transformers ViT-family config."""
    hidden_size, num_heads = source_config.hidden_size, source_config.num_attention_heads
    head_dim = getattr(source_config, "head_dim", None)
    if head_dim is not None and head_dim * num_heads != hidden_size:
        raise ValueError(
            f"head_dim={head_dim} x num_attention_heads={num_heads} != hidden_size={hidden_size}; "
            "ViTReduced's attention width equals hidden_size"
        )
    labels = (
        {
            "id2label": dict(source_config.id2label),
            "label2id": dict(source_config.label2id or {name: i for i, name in source_config.id2label.items()}),
            "problem_type": source_config.problem_type,
        }
        if has_heads
        else {"num_labels": 0, "id2label": {}, "label2id": {}}
    )
    return {
        "hidden_size": hidden_size,
        "num_hidden_layers": source_config.num_hidden_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": getattr(source_config, "intermediate_size", None),
        "hidden_act": source_config.hidden_act,
        "hidden_dropout_prob": getattr(source_config, "hidden_dropout_prob", getattr(source_config, "dropout", 0.0)),
        "attention_probs_dropout_prob": getattr(
            source_config, "attention_probs_dropout_prob", getattr(source_config, "attention_dropout", 0.0)
        ),
        "initializer_range": source_config.initializer_range,
        "layer_norm_eps": source_config.layer_norm_eps,
        "image_size": _square(source_config.image_size, "image_size"),
        "patch_size": _square(source_config.patch_size, "patch_size"),
        "num_channels": source_config.num_channels,
        "qkv_bias": getattr(source_config, "qkv_bias", True),
        **family.options(source_config),
        **labels,
    }


def _transformers_state_to_ours(source, encoder, family: _Family, config, *, drop_pooler: bool) -> dict:
    """Our weights from the source's, renamed by the family's table; every source weight must be used."""
    theirs, their_heads = encoder.state_dict(), source.state_dict()
    with torch.device("meta"):
        our_keys = ViTReducedForImageClassification(config).state_dict().keys()
    used, state = set(family.unused), {}
    if drop_pooler:
        used |= {key for key in theirs if key.startswith("pooler.")}
    for key in our_keys:
        head = key.split(".")[0]
        if head in family.heads:
            name = family.heads[head] + key.removeprefix(head)
            state[key] = their_heads[name]
            continue
        ours = key.removeprefix("vit.")
        pattern, replacement = next((p, r) for p, r in family.renames if re.fullmatch(f"{p}.*", ours))
        name = re.sub(f"^{pattern}", replacement, ours)
        if ".qkv." in name:
            parts = [name.replace(".qkv.", f".{projection}.") for projection in ("q_proj", "k_proj", "v_proj")]
            state[key] = torch.cat([theirs[part] for part in parts])
            used.update(parts)
        elif name in theirs:
            state[key] = theirs[name]
            used.add(name)
        else:  # a bias the source's layer lacks (CLIP's patch embedding): zero computes the same
            state[key] = theirs[name.removesuffix("bias") + "weight"].new_zeros(config.hidden_size)
    if leftover := sorted(set(theirs) - used):
        raise ValueError(f"the source has weights ViTReduced has no place for: {', '.join(leftover[:4])}")
    state = _fit_shapes(state, family)
    with torch.no_grad():
        return {key: value.detach().clone() for key, value in state.items()}


def _fit_shapes(state: dict, family: _Family) -> dict:
    """Our token shapes (CLIP keeps its class token and position embedding without batch dimensions), and the class
    token's position folded into it where the family asks."""
    cls, positions = "vit.embeddings.cls_token", "vit.embeddings.position_embeddings"
    state[cls] = state[cls].reshape(1, 1, -1)
    state[positions] = state[positions].reshape(1, -1, state[cls].shape[-1])
    if family.folds_class_position:
        state[cls] = state[cls] + state[positions][:, :1]
        state[positions] = state[positions][:, 1:]
    return state


# Transformers image models that are not ViTs ViTReduced can hold, by model_type, and what it cannot represent.
UNREPRESENTABLE = {
    "beit": "relative position bias and layer scale",
    "data2vec-vision": "relative position bias and layer scale (BEiT's architecture)",
    "swin": "windowed attention with relative position bias and patch merging (stages of different widths)",
    "swinv2": "windowed attention with relative position bias and patch merging (stages of different widths)",
    "clip": "a text and vision model whole; save its vision tower alone (CLIPVisionModel) and convert that",
    "siglip": "attention pooling in Transformers' layout (timm's SigLIP converts); and this is a text and vision model",
    "siglip_vision_model": "attention pooling in Transformers' layout (timm's SigLIP converts)",
    "vit_mae": "random masking of patches in the forward pass (mask_ratio)",
    "vit_hybrid": "a convolutional (BiT) stem instead of a patch embedding",
}
# The model types that convert, and the classes a folder of each may hold (the first where it names none).
ARCHITECTURES = {
    "vit": ("ViTForImageClassification", "ViTModel"),
    "deit": ("DeiTForImageClassificationWithTeacher", "DeiTForImageClassification"),
    "dinov2": ("Dinov2Model",),
    "dinov2_with_registers": ("Dinov2WithRegistersModel",),
    "clip_vision_model": ("CLIPVisionModel",),
}


def load_transformers_folder(path, name: str | None = None):
    """The Transformers ViT-family model saved in a local folder (`name`: what the user called it, e.g. the Hub id it
    was downloaded from), loaded with every weight accounted for."""
    import transformers
    from transformers import AutoConfig

    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a folder; allowed: a folder holding a saved Transformers ViT")
    name = path if name is None else name
    config = AutoConfig.from_pretrained(path)
    if config.model_type in UNREPRESENTABLE:
        raise ValueError(
            f"{name} holds a {config.model_type!r} model ({', '.join(config.architectures or [])}); ViTReduced "
            f"cannot represent {UNREPRESENTABLE[config.model_type]}"
        )
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"{name} holds a {config.model_type!r} model; allowed: {', '.join(map(repr, ARCHITECTURES))}")
    allowed = ARCHITECTURES[config.model_type]
    architectures = config.architectures or allowed[:1]
    architecture = next((candidate for candidate in allowed if candidate in architectures), None)
    if architecture is None:
        raise ValueError(f"{name} holds architectures={architectures}; allowed: {', '.join(allowed)}")
    model_class = getattr(transformers, architecture)
    model, info = model_class.from_pretrained(path, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    unexpected = sorted(info["unexpected_keys"])
    if architecture == "ViTModel" and missing and all("pooler." in k for k in missing):
        # Saved without a pooler (add_pooling_layer=False): the randomly initialized one is not the checkpoint's.
        model.pooler, missing = None, []
    # The classifier does not use a pooler, so a checkpoint's pooler weights change none of its outputs.
    unexpected = [k for k in unexpected if not (architecture == "ViTForImageClassification" and "pooler." in k)]
    mismatched = sorted(key for key, *_ in info["mismatched_keys"])
    problems = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
    if details := describe_key_problems(problems):
        raise ValueError(f"The weights at {name} do not fit a {model_class.__name__} ({details})")
    return model.eval()
