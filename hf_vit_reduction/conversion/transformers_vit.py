"""🤗 Transformers' ViT -> a baseline ViTReduced with the same logits."""

import os

import torch
from torch import nn

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


def from_transformers(model_or_path, drop_pooler: bool = False):
    """A baseline ViTReduced with the weights of a 🤗 Transformers `ViTForImageClassification` or `ViTModel`.

    `model_or_path` is a model or a local folder (v5 key names or the legacy `vit.encoder.layer.N...` ones that
    `save_pretrained` writes by default). LayerNorm eps, activation, dropouts, labels, image and patch size are copied.
    A `ViTModel` becomes a model without classifier (`num_labels=0`, logits = the final CLS token). Its pooler
    (dense + tanh) has no counterpart here: it is an error unless `drop_pooler=True`. Attention runs through this
    model's default implementation (sdpa), which agrees with eager to float rounding.
    """
    from transformers import ViTForImageClassification, ViTModel

    if isinstance(model_or_path, (str, os.PathLike)):
        source = load_transformers_folder(model_or_path)
    else:
        source = model_or_path
    if isinstance(source, ViTForImageClassification):
        encoder, classifier = source.vit, source.classifier
    elif isinstance(source, ViTModel):
        encoder, classifier = source, None
    else:
        raise TypeError(
            f"model_or_path is a {type(source).__name__}; allowed: a ViTForImageClassification, a ViTModel, "
            "or a local folder holding one"
        )
    if encoder.embeddings.mask_token is not None:
        raise ValueError("the source has a mask token (masked image modeling), which ViTReduced cannot represent")
    if encoder.pooler is not None and not drop_pooler:
        raise ValueError(
            "the source ViTModel has a pooler (dense + tanh on the CLS token), which ViTReduced does not have; "
            "pass drop_pooler=True to convert the encoder without it (ViTForImageClassification ignores it too)"
        )

    source_config = source.config
    hidden_size, num_heads = (
        source_config.hidden_size,
        source_config.num_attention_heads,
    )
    head_dim = getattr(source_config, "head_dim", None)
    if head_dim is not None and head_dim * num_heads != hidden_size:
        raise ValueError(
            f"head_dim={head_dim} x num_attention_heads={num_heads} != hidden_size={hidden_size}; "
            "ViTReduced's attention width equals hidden_size"
        )
    labels = (
        {
            "id2label": dict(source_config.id2label),
            "label2id": dict(source_config.label2id),
            "problem_type": source_config.problem_type,
        }
        if isinstance(classifier, nn.Linear)
        else {"num_labels": 0, "id2label": {}, "label2id": {}}
    )
    config = ViTReducedConfig(
        hidden_size=hidden_size,
        num_hidden_layers=source_config.num_hidden_layers,
        num_attention_heads=num_heads,
        intermediate_size=source_config.intermediate_size,
        hidden_act=source_config.hidden_act,
        hidden_dropout_prob=source_config.hidden_dropout_prob,
        attention_probs_dropout_prob=source_config.attention_probs_dropout_prob,
        initializer_range=source_config.initializer_range,
        layer_norm_eps=source_config.layer_norm_eps,
        image_size=_square(source_config.image_size, "image_size"),
        patch_size=_square(source_config.patch_size, "patch_size"),
        num_channels=source_config.num_channels,
        qkv_bias=source_config.qkv_bias,
        **labels,
    )

    embeddings = encoder.embeddings
    state = {
        "vit.embeddings.cls_token": embeddings.cls_token,
        "vit.embeddings.position_embeddings": embeddings.position_embeddings,
        "vit.embeddings.projection.weight": embeddings.patch_embeddings.projection.weight,
        "vit.embeddings.projection.bias": embeddings.patch_embeddings.projection.bias,
        "vit.layernorm.weight": encoder.layernorm.weight,
        "vit.layernorm.bias": encoder.layernorm.bias,
    }
    for index, layer in enumerate(encoder.layers):
        attention, prefix = layer.attention, f"vit.layers.{index}."
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        state[prefix + "attention.qkv.weight"] = torch.cat([p.weight for p in projections])
        if config.qkv_bias:
            state[prefix + "attention.qkv.bias"] = torch.cat([p.bias for p in projections])
        for ours, theirs in (
            ("attention.proj", attention.o_proj),
            ("layernorm_before", layer.layernorm_before),
            ("layernorm_after", layer.layernorm_after),
            ("mlp.fc1", layer.mlp.fc1),
            ("mlp.fc2", layer.mlp.fc2),
        ):
            state[prefix + ours + ".weight"], state[prefix + ours + ".bias"] = theirs.weight, theirs.bias
    if isinstance(classifier, nn.Linear):
        state["classifier.weight"], state["classifier.bias"] = (
            classifier.weight,
            classifier.bias,
        )
    with torch.no_grad():
        state = {key: value.detach().clone() for key, value in state.items()}
    return build_with_weights(ViTReducedForImageClassification, config, state)


# Transformers image models that are not ViTs ViTReduced can hold, by model_type, and what it cannot represent.
UNREPRESENTABLE = {
    "deit": "the distillation token (a second class token, attended to by every block, in all of Transformers' "
    "DeiT classes; the non-distilled DeiT checkpoints are saved as model_type 'vit' and convert)",
    "beit": "relative position bias and layer scale",
    "data2vec-vision": "relative position bias and layer scale (BEiT's architecture)",
    "dinov2": "layer scale",
    "dinov2_with_registers": "register tokens and layer scale",
    "swin": "windowed attention with relative position bias and patch merging (stages of different widths)",
    "swinv2": "windowed attention with relative position bias and patch merging (stages of different widths)",
    "clip": "a LayerNorm before the blocks (pre_layrnorm); and this is a text and vision model",
    "clip_vision_model": "a LayerNorm before the blocks (pre_layrnorm)",
    "siglip": "attention pooling without a class token; and this is a text and vision model",
    "siglip_vision_model": "attention pooling without a class token",
    "vit_mae": "random masking of patches in the forward pass (mask_ratio)",
    "vit_hybrid": "a convolutional (BiT) stem instead of a patch embedding",
}


def load_transformers_folder(path, name: str | None = None):
    """The Transformers ViT saved in a local folder (`name`: what the user called it, e.g. the Hub id it was
    downloaded from), loaded with every weight accounted for."""
    from transformers import AutoConfig, ViTForImageClassification, ViTModel

    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a folder; allowed: a folder holding a saved Transformers ViT")
    name = path if name is None else name
    config = AutoConfig.from_pretrained(path)
    if config.model_type in UNREPRESENTABLE:
        raise ValueError(
            f"{name} holds a {config.model_type!r} model ({', '.join(config.architectures or [])}); ViTReduced "
            f"cannot represent {UNREPRESENTABLE[config.model_type]}"
        )
    if config.model_type != "vit":
        raise ValueError(
            f"{name} holds a {config.model_type!r} model; allowed: 'vit' (ViTForImageClassification or ViTModel)"
        )
    architectures = config.architectures or ["ViTForImageClassification"]
    if "ViTForImageClassification" in architectures:
        model_class = ViTForImageClassification
    elif "ViTModel" in architectures:
        model_class = ViTModel
    else:
        raise ValueError(f"{name} holds architectures={architectures}; allowed: ViTForImageClassification, ViTModel")
    model, info = model_class.from_pretrained(path, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    unexpected = sorted(info["unexpected_keys"])
    if model_class is ViTModel and missing and all("pooler." in k for k in missing):
        # Saved without a pooler (add_pooling_layer=False): the randomly initialized one is not the checkpoint's.
        model.pooler, missing = None, []
    # The classifier does not use a pooler, so a checkpoint's pooler weights change none of its outputs.
    unexpected = [k for k in unexpected if not (model_class is ViTForImageClassification and "pooler." in k)]
    mismatched = sorted(key for key, *_ in info["mismatched_keys"])
    problems = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
    if details := describe_key_problems(problems):
        raise ValueError(f"The weights at {name} do not fit a {model_class.__name__} ({details})")
    return model.eval()
