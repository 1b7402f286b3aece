"""Bring pretrained ViTs into ViTReduced, and reduce a baseline after training.

`from_transformers` and `from_timm` give a baseline `ViTReducedForImageClassification` whose logits equal the
source's; `reduce` turns a baseline into `shallow` (prune each MLP's hidden units) or `grouped` (one MLP per group of
blocks). The command writes a ready model folder (weights, config, code and image processor):

    python -m hf_vit_reduction.convert --from transformers --input vit-folder --output out
    python -m hf_vit_reduction.convert --from timm --input vit_base_patch16_224 --output out --strategy shallow
    python -m hf_vit_reduction.convert --from timm --input weights.safetensors --timm_model vit_base_patch16_224 \\
        --output out --strategy grouped --share_method mean

A timm model name builds that architecture with random weights (nothing is downloaded).
"""

import argparse
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import ViTImageProcessor
from transformers.image_utils import PILImageResampling

from .configuration_vit_reduced import SHAPE_FIELDS, ViTReducedConfig
from .modeling_vit_reduced import (
    ViTReducedForImageClassification,
    describe_key_problems,
)

POST_HOC_STRATEGIES = ("shallow", "grouped")
PRUNE_METHODS = ("first", "magnitude")
SHARE_METHODS = ("leader", "mean")

# Fields that `reduce` sets; a converter always returns a baseline.
_REDUCTION_FIELDS = (
    "reduction_strategy",
    "reduction_mlp_ratio",
    "mlp_share_group_size",
)


def _allowed(values) -> str:
    return ", ".join(map(repr, values))


def _build(model_class, config, state_dict: dict, training: bool = False):
    """A model of `model_class` holding exactly `state_dict`, without spending time (or the RNG) on an init."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.train(training)


def _square(value, field: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(
                f"{field}={tuple(value)} is not square; ViTReduced supports square images and patches only"
            )
        value = value[0]
    return int(value)


def _with_overrides(derived: dict, overrides: dict, fixed: tuple[str, ...]) -> dict:
    """`derived` updated by `overrides`, refusing overrides of reduction fields and of fields the weights fix."""
    for field in _REDUCTION_FIELDS:
        if field in overrides:
            raise ValueError(
                f"{field}={overrides[field]!r} cannot be set while converting; the converters return a "
                "baseline: reduce it with hf_vit_reduction.convert.reduce"
            )
    for field in fixed:
        if field in overrides and overrides[field] != derived[field]:
            raise ValueError(
                f"{field}={overrides[field]!r} contradicts the weights, which have {field}={derived[field]!r}"
            )
    if "id2label" in overrides and "num_labels" not in overrides:
        # The labels decide num_labels; whether they fit the head is checked on the config.
        derived = {k: v for k, v in derived.items() if k not in ("num_labels", "label2id")}
    return {**derived, **overrides}


# --- 🤗 Transformers -----------------------------------------------------------------------------------------------


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
        source = _load_transformers_folder(model_or_path)
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
            (f"mlps.{index}.fc1", layer.mlp.fc1),
            (f"mlps.{index}.fc2", layer.mlp.fc2),
        ):
            name = ("vit." if ours.startswith("mlps.") else prefix) + ours
            state[name + ".weight"], state[name + ".bias"] = theirs.weight, theirs.bias
    if isinstance(classifier, nn.Linear):
        state["classifier.weight"], state["classifier.bias"] = (
            classifier.weight,
            classifier.bias,
        )
    with torch.no_grad():
        state = {key: value.detach().clone() for key, value in state.items()}
    return _build(ViTReducedForImageClassification, config, state)


def _load_transformers_folder(path):
    """The Transformers ViT saved in a local folder, loaded with every weight accounted for."""
    from transformers import AutoConfig, ViTForImageClassification, ViTModel

    if not os.path.isdir(path):
        raise ValueError(f"{str(path)!r} is not a local model folder (the Hub is not reachable from here)")
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "vit":
        raise ValueError(
            f"{path} holds a {config.model_type!r} model; allowed: 'vit' (ViTForImageClassification or ViTModel)"
        )
    architectures = config.architectures or ["ViTForImageClassification"]
    if "ViTForImageClassification" in architectures:
        model_class = ViTForImageClassification
    elif "ViTModel" in architectures:
        model_class = ViTModel
    else:
        raise ValueError(f"{path} holds architectures={architectures}; allowed: ViTForImageClassification, ViTModel")
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
        raise ValueError(f"The weights at {path} do not fit a {model_class.__name__} ({details})")
    return model.eval()


# --- timm ----------------------------------------------------------------------------------------------------------

# State-dict keys of timm features that ViTReduced does not have, and the features' names.
_TIMM_FEATURES = (
    ("reg_token", "register tokens (reg_tokens > 0)"),
    ("norm_pre.", "a pre-norm before the blocks (pre_norm=True)"),
    ("fc_norm.", "a norm after pooling (fc_norm, global average pooling)"),
    ("attn_pool.", "attention pooling"),
    (".ls1.", "layer scale (init_values)"),
    (".ls2.", "layer scale (init_values)"),
    (".q_norm.", "qk_norm"),
    (".k_norm.", "qk_norm"),
    (".attn.norm.", "scale_attn_norm"),
    (".mlp.norm.", "scale_mlp_norm"),
    (".attn.gate.", "gated attention"),
    ("patch_embed.norm.", "a norm in the patch embedding"),
)


def _timm_act_name(act: nn.Module) -> str | None:
    """The Transformers activation name that computes what a timm MLP's activation computes."""
    from timm.layers.activations import GELU, GELUTanh, QuickGELU

    if isinstance(act, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}.get(act.approximate)
    for act_class, name in (
        (GELU, "gelu"),
        (GELUTanh, "gelu_pytorch_tanh"),
        (QuickGELU, "quick_gelu"),
        (nn.SiLU, "silu"),
        (nn.ReLU, "relu"),
    ):
        if type(act) is act_class:
            return name
    return None


def from_timm(model_or_state_dict, **config_overrides):
    """A baseline ViTReduced with the weights of a timm `VisionTransformer` (a model or its state dict).

    A model is checked for what ViTReduced cannot represent (global average pooling, no class token, register
    tokens, qk_norm, layer scale, pre-norm, fc_norm, dynamic image size, ...) and its LayerNorm eps, activation,
    dropouts, image and patch size are copied; ImageNet class names become the labels where timm knows them. A state
    dict does not record the number of heads: pass `num_attention_heads=` (and `layer_norm_eps=`/`hidden_act=` if
    not timm's 1e-6 and exact GELU); it is assumed to be a standard token-pooled ViT (`vit_*` models).
    `config_overrides` set further config fields (labels, drop rates); fields the weights fix must agree with them.
    Biases a timm layer lacks (`proj_bias=False`) become zeros, which compute the same.
    """
    if isinstance(model_or_state_dict, nn.Module):
        derived, fixed = _describe_timm_model(model_or_state_dict)
        state = model_or_state_dict.state_dict()
        _check_timm_keys(state, derived["num_hidden_layers"])
    elif isinstance(model_or_state_dict, Mapping):
        state = dict(model_or_state_dict)
        derived, fixed = _describe_timm_state_dict(state, config_overrides)
    else:
        raise TypeError(
            f"model_or_state_dict is a {type(model_or_state_dict).__name__}; allowed: a timm VisionTransformer "
            "or its state dict"
        )
    config = ViTReducedConfig(**_with_overrides(derived, config_overrides, fixed))
    if config.num_labels != derived["num_labels"]:
        raise ValueError(
            f"the labels give num_labels={config.num_labels} but the head has {derived['num_labels']} outputs"
        )
    return _build(ViTReducedForImageClassification, config, _timm_state_to_ours(state, config))


def _describe_timm_model(model) -> tuple[dict, tuple[str, ...]]:
    """Config fields of a timm VisionTransformer, or a ValueError naming everything ViTReduced lacks."""
    from timm.layers import Attention, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"model_or_state_dict is a {type(model).__name__}; allowed: a timm VisionTransformer or its state dict"
        )
    problems = []

    def require(condition: bool, feature: str):
        if not condition:
            problems.append(feature)

    require(
        model.global_pool == "token",
        f"global_pool={model.global_pool!r} (only 'token', the class token, is supported)",
    )
    require(model.has_class_token, "class_token=False")
    require(not model.num_reg_tokens, f"reg_tokens={model.num_reg_tokens}")
    require(not model.no_embed_class, "no_embed_class=True")
    require(model.pos_embed is not None, "no position embedding (pos_embed='none')")
    require(not model.dynamic_img_size, "dynamic_img_size=True")
    require(isinstance(model.patch_drop, nn.Identity), "patch dropout (patch_drop_rate > 0)")
    require(isinstance(model.norm_pre, nn.Identity), "a pre-norm (pre_norm=True)")
    require(isinstance(model.fc_norm, nn.Identity), "fc_norm")
    require(model.attn_pool is None, "attention pooling")
    require(isinstance(model.norm, nn.LayerNorm), "no final LayerNorm")
    require(
        model.head_drop.p == 0,
        f"head dropout drop_rate={model.head_drop.p} (set it to 0 to convert without it)",
    )
    patch_embed = model.patch_embed
    require(
        type(patch_embed) is PatchEmbed
        and patch_embed.flatten
        and isinstance(patch_embed.norm, nn.Identity)
        and not patch_embed.dynamic_img_pad,
        "a non-standard patch embedding",
    )
    require(
        len(set(patch_embed.img_size)) == 1 and len(set(patch_embed.patch_size)) == 1,
        f"non-square img_size={patch_embed.img_size} or patch_size={patch_embed.patch_size}",
    )

    norms = [model.norm] if isinstance(model.norm, nn.LayerNorm) else []
    heads, widths, acts, drop_paths = set(), set(), set(), []
    for index, block in enumerate(model.blocks):
        if type(block) is not Block:
            problems.append(f"blocks.{index} is a {type(block).__name__} (only timm's pre-norm Block)")
            continue
        attn, mlp = block.attn, block.mlp
        require(
            type(attn) is Attention and attn.num_heads * attn.head_dim == model.embed_dim,
            f"blocks.{index}.attn is not a standard multi-head attention",
        )
        require(
            type(attn) is not Attention
            or all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm)),
            "qk_norm or scale_attn_norm",
        )
        require(
            isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity),
            "layer scale (init_values)",
        )
        require(
            type(mlp) is Mlp and isinstance(mlp.norm, nn.Identity),
            f"blocks.{index}.mlp is not a plain fc1-act-fc2 MLP",
        )
        if problems:
            continue
        norms += [block.norm1, block.norm2]
        heads.add(attn.num_heads)
        widths.add(mlp.fc1.out_features)
        acts.add(_timm_act_name(mlp.act) or f"{type(mlp.act).__name__} activation")
        # timm's dropouts sit where ours do, except one inside the MLP.
        require(
            mlp.drop1.p == 0 and attn.proj_drop.p == mlp.drop2.p == model.pos_drop.p,
            "proj_drop_rate > 0 (a dropout inside the MLP); set it to 0 to convert without it",
        )
        drop_paths.append(getattr(block.drop_path1, "drop_prob", 0.0))
    require(len(heads) <= 1 and len(widths) <= 1, "blocks of different widths")
    unknown_acts = sorted(act for act in acts if act.endswith(" activation"))
    require(
        not unknown_acts and len(acts) <= 1,
        ", ".join(unknown_acts) or "mixed activations",
    )
    require(
        all(isinstance(n, nn.LayerNorm) and n.elementwise_affine and n.bias is not None for n in norms),
        "a norm that is not an affine LayerNorm (e.g. RmsNorm)",
    )
    eps = {n.eps for n in norms if isinstance(n, nn.LayerNorm)}
    require(len(eps) <= 1, f"LayerNorms with different eps {sorted(eps)}")
    depth = len(model.blocks)
    last = drop_paths[-1] if drop_paths else 0.0
    require(
        all(
            math.isclose(rate, last * index / max(depth - 1, 1), abs_tol=1e-6) for index, rate in enumerate(drop_paths)
        ),
        f"drop path rates {drop_paths} that do not rise linearly from 0",
    )
    if problems:
        raise ValueError(
            "Cannot convert this timm VisionTransformer; ViTReduced cannot represent: "
            + "; ".join(dict.fromkeys(problems))
        )

    attn = model.blocks[0].attn
    derived = {
        "hidden_size": model.embed_dim,
        "num_hidden_layers": depth,
        "num_attention_heads": attn.num_heads,
        "intermediate_size": model.blocks[0].mlp.fc1.out_features,
        "hidden_act": acts.pop(),
        "layer_norm_eps": eps.pop(),
        "hidden_dropout_prob": model.pos_drop.p,
        "attention_probs_dropout_prob": attn.attn_drop.p,
        "drop_path_rate": last,
        "image_size": patch_embed.img_size[0],
        "patch_size": patch_embed.patch_size[0],
        "num_channels": patch_embed.proj.in_channels,
        "qkv_bias": attn.qkv.bias is not None,
        "num_labels": model.num_classes,
        **_timm_labels(model),
    }
    return derived, SHAPE_FIELDS


def _timm_labels(model) -> dict:
    """ImageNet class names for a timm model whose head is one of timm's ImageNet heads; none otherwise."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if not subset:
        return {}
    info = ImageNetInfo(subset)
    if info.num_classes() != model.num_classes:
        return {}
    names = [info.index_to_description(index) for index in range(model.num_classes)]
    # label2id needs unique names; ImageNet has two "crane"s and two "maillot"s.
    names = [
        f"{name} ({info.index_to_label_name(index)})" if names.count(name) > 1 else name
        for index, name in enumerate(names)
    ]
    return {
        "id2label": dict(enumerate(names)),
        "label2id": {name: index for index, name in enumerate(names)},
    }


def _timm_keys(depth: int) -> tuple[set[str], set[str]]:
    """(required keys, optional bias keys) of a timm ViT state dict with `depth` blocks."""
    required = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "norm.weight",
        "norm.bias",
    }
    optional = {"patch_embed.proj.bias", "head.weight", "head.bias"}
    for index in range(depth):
        block = f"blocks.{index}."
        for norm in ("norm1", "norm2"):
            required |= {f"{block}{norm}.weight", f"{block}{norm}.bias"}
        for linear in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            required.add(f"{block}{linear}.weight")
            optional.add(f"{block}{linear}.bias")
    return required, optional


def _check_timm_keys(state: dict, depth: int):
    required, optional = _timm_keys(depth)
    unexpected = sorted(set(state) - required - optional)
    missing = sorted(required - set(state))
    if unexpected:
        features = [feature for pattern, feature in _TIMM_FEATURES if any(pattern in key for key in unexpected)]
        raise ValueError(
            "Cannot convert this timm state dict; ViTReduced cannot represent "
            + (", ".join(dict.fromkeys(features)) or "its extra weights")
            + f" (keys: {', '.join(unexpected[:4])})"
        )
    if missing:
        raise ValueError(
            f"The timm state dict lacks {', '.join(missing[:4])}; ViTReduced needs a class token, a learned "
            "position embedding and a final LayerNorm"
        )


def _describe_timm_state_dict(state: dict, overrides: dict) -> tuple[dict, tuple[str, ...]]:
    """Config fields that the shapes of a timm ViT state dict fix."""
    if "num_attention_heads" not in overrides:
        raise ValueError(
            "num_attention_heads is required with a state dict, which does not record it "
            "(e.g. from_timm(state_dict, num_attention_heads=12) for vit_base_patch16_224)"
        )
    blocks = {int(key.split(".")[1]) for key in state if key.startswith("blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    _check_timm_keys(state, depth)
    if depth == 0:
        raise ValueError("The timm state dict has no blocks")
    projection = state["patch_embed.proj.weight"]
    if projection.shape[-1] != projection.shape[-2]:
        raise ValueError(
            f"patch size {tuple(projection.shape[-2:])} is not square; ViTReduced supports square patches only"
        )
    positions = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(
            f"pos_embed holds {positions + 1} positions: not a class token plus a square grid "
            "(no_embed_class, register tokens or non-square images are not supported)"
        )
    derived = {
        "hidden_size": state["cls_token"].shape[-1],
        "num_hidden_layers": depth,
        "intermediate_size": state["blocks.0.mlp.fc1.weight"].shape[0],
        "image_size": grid * projection.shape[-1],
        "patch_size": projection.shape[-1],
        "num_channels": projection.shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "num_labels": state["head.weight"].shape[0] if "head.weight" in state else 0,
    }
    fixed = tuple(key for key in derived if key != "num_labels")
    return derived, fixed


def _timm_state_to_ours(state: dict, config: ViTReducedConfig) -> dict:
    def bias(key: str, weight: torch.Tensor) -> torch.Tensor:
        # A layer built without bias computes what one with a zero bias does.
        return state.get(key, weight.new_zeros(weight.shape[0]))

    ours = {
        "vit.embeddings.cls_token": state["cls_token"],
        "vit.embeddings.position_embeddings": state["pos_embed"],
        "vit.embeddings.projection.weight": state["patch_embed.proj.weight"],
        "vit.embeddings.projection.bias": bias("patch_embed.proj.bias", state["patch_embed.proj.weight"]),
        "vit.layernorm.weight": state["norm.weight"],
        "vit.layernorm.bias": state["norm.bias"],
    }
    for index in range(config.num_hidden_layers):
        theirs, prefix = f"blocks.{index}.", f"vit.layers.{index}."
        for ours_name, their_name in (
            ("layernorm_before", "norm1"),
            ("layernorm_after", "norm2"),
        ):
            for part in ("weight", "bias"):
                ours[f"{prefix}{ours_name}.{part}"] = state[f"{theirs}{their_name}.{part}"]
        ours[prefix + "attention.qkv.weight"] = state[theirs + "attn.qkv.weight"]
        if config.qkv_bias:
            ours[prefix + "attention.qkv.bias"] = state[theirs + "attn.qkv.bias"]
        for ours_name, their_name in (
            (prefix + "attention.proj", "attn.proj"),
            (f"vit.mlps.{index}.fc1", "mlp.fc1"),
            (f"vit.mlps.{index}.fc2", "mlp.fc2"),
        ):
            weight = state[f"{theirs}{their_name}.weight"]
            ours[ours_name + ".weight"] = weight
            ours[ours_name + ".bias"] = bias(f"{theirs}{their_name}.bias", weight)
    if config.num_labels > 0:
        ours["classifier.weight"] = state["head.weight"]
        ours["classifier.bias"] = bias("head.bias", state["head.weight"])
    with torch.no_grad():
        return {key: value.detach().clone() for key, value in ours.items()}


# --- Post-hoc reduction --------------------------------------------------------------------------------------------


def _check_reduce_arguments(strategy, reduction_mlp_ratio, prune_method, share_method, mlp_share_group_size):
    if strategy == "thin":
        raise ValueError(
            "strategy='thin' has no post-hoc meaning: a thin MLP is trained from scratch, not cut from a trained "
            "one; use strategy='shallow', which prunes trained MLPs to a width (reduction_mlp_ratio=0.5 gives "
            "ViT-B/16 thin's 1536)"
        )
    if strategy not in POST_HOC_STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not valid; allowed: {_allowed(POST_HOC_STRATEGIES)}")
    if prune_method not in PRUNE_METHODS:
        raise ValueError(f"prune_method={prune_method!r} is not valid; allowed: {_allowed(PRUNE_METHODS)}")
    if share_method not in SHARE_METHODS:
        raise ValueError(f"share_method={share_method!r} is not valid; allowed: {_allowed(SHARE_METHODS)}")
    if strategy == "grouped":
        if prune_method != "first":
            raise ValueError(
                f"prune_method={prune_method!r} is not valid with strategy='grouped'; allowed: 'first' "
                "(the default: prune_method applies to 'shallow' only)"
            )
        if reduction_mlp_ratio is not None:
            raise ValueError(
                f"reduction_mlp_ratio={reduction_mlp_ratio!r} is not valid with strategy='grouped'; allowed: "
                "None (grouped's ratio scales freshly initialized weights; trained weights are shared unscaled)"
            )
    else:
        if share_method != "leader":
            raise ValueError(
                f"share_method={share_method!r} is not valid with strategy='shallow'; allowed: 'leader' "
                "(the default: share_method applies to 'grouped' only)"
            )
        if mlp_share_group_size is not None:
            raise ValueError(
                f"mlp_share_group_size={mlp_share_group_size!r} is not valid with strategy='shallow'; "
                "allowed: None (it applies to 'grouped' only)"
            )


def reduce(
    model,
    strategy: str,
    reduction_mlp_ratio: float | None = None,
    prune_method: str = "first",
    share_method: str = "leader",
    mlp_share_group_size: int | None = None,
):
    """A new model: the baseline `model` reduced to `strategy` after the fact. `model` is left as it is.

    - `shallow` keeps `int(intermediate_size * reduction_mlp_ratio)` hidden units of every MLP (default ratio 0.5):
      `prune_method="first"` the first ones (the paper's slice: fc1 rows, fc2 columns; fc2's bias is kept), or
      `"magnitude"` those with the largest ||fc1 row|| * ||fc2 column||, in their original order.
    - `grouped` gives each group of `mlp_share_group_size` blocks (default 2) one MLP: `share_method="leader"` the
      group's first block's (the paper), or `"mean"` the average of the group's MLP weights. Trained weights are
      not scaled by 1/sqrt(2): that is the paper's init of a fresh shared MLP, which the config records as
      `reduction_mlp_ratio` and which only applies when a model is initialized.
    - `thin` is not a reduction of trained weights: it is an error that says to use `shallow`.
    Everything outside the MLPs is copied; the config is the baseline's with the new strategy.
    """
    _check_reduce_arguments(strategy, reduction_mlp_ratio, prune_method, share_method, mlp_share_group_size)
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != ViTReducedConfig.model_type:
        raise TypeError(
            f"model is a {type(model).__name__}; allowed: a ViTReduced model (convert others with "
            "from_transformers or from_timm first)"
        )
    if config.reduction_strategy != "baseline":
        raise ValueError(
            f"model has reduction_strategy={config.reduction_strategy!r}; allowed: 'baseline' "
            "(a post-hoc reduction starts from full MLPs)"
        )
    changes = {
        "reduction_strategy": strategy,
        "reduction_mlp_ratio": reduction_mlp_ratio,
    }
    if mlp_share_group_size is not None:
        changes["mlp_share_group_size"] = mlp_share_group_size
    new_config = type(config).from_dict({**config.to_dict(), **changes})
    new_config._attn_implementation = config._attn_implementation

    encoder = model.vit if hasattr(model, "vit") else model
    prefix = "vit.mlps." if encoder is not model else "mlps."
    with torch.no_grad():
        state = {key: value.clone() for key, value in model.state_dict().items() if not key.startswith(prefix)}
        if strategy == "shallow":
            for index, mlp in enumerate(encoder.mlps):
                keep = _kept_units(mlp, new_config.mlp_hidden_size, prune_method)
                state.update(
                    {
                        f"{prefix}{index}.fc1.weight": mlp.fc1.weight[keep].clone(),
                        f"{prefix}{index}.fc1.bias": mlp.fc1.bias[keep].clone(),
                        f"{prefix}{index}.fc2.weight": mlp.fc2.weight[:, keep].clone(),
                        f"{prefix}{index}.fc2.bias": mlp.fc2.bias.clone(),
                    }
                )
        else:
            size = new_config.mlp_share_group_size
            for group in range(new_config.num_unique_mlps):
                members = list(encoder.mlps[group * size : (group + 1) * size])
                if share_method == "leader":
                    members = members[:1]
                for name, first in members[0].named_parameters():
                    values = [m.get_parameter(name) for m in members]
                    # Averaged in float32 so that a bfloat16 model's mean is rounded once.
                    mean = torch.stack(values).float().mean(0).to(first.dtype)
                    state[f"{prefix}{group}.{name}"] = mean
    return _build(type(model), new_config, state, training=model.training)


def _kept_units(mlp: nn.Module, width: int, prune_method: str):
    """The hidden units of `mlp` that a shallow MLP of `width` keeps, in their original order."""
    if prune_method == "first":
        return slice(0, width)
    # A unit's contribution is bounded by the norms of its input row and output column.
    scores = mlp.fc1.weight.float().norm(dim=1) * mlp.fc2.weight.float().norm(dim=0)
    return scores.topk(width).indices.sort().values


# --- Command -------------------------------------------------------------------------------------------------------


def _image_processor_for(config: ViTReducedConfig, mean, std, resample=None):
    """A ViTImageProcessor resizing to the model's size and normalizing by `mean` and `std`."""
    channels = config.num_channels
    kwargs = {} if resample is None else {"resample": resample}
    return ViTImageProcessor(
        size={"height": config.image_size, "width": config.image_size},
        image_mean=list(mean)[:channels] if len(mean) >= channels else [0.5] * channels,
        image_std=list(std)[:channels] if len(std) >= channels else [0.5] * channels,
        **kwargs,
    )


def _load_timm_source(path: str, timm_model: str | None):
    """A timm model from a model name (random weights) or a state dict file of `timm_model`'s architecture."""
    if os.path.isfile(path):
        if not timm_model:
            raise ValueError(
                f"--input {path} is a weights file; pass --timm_model NAME (e.g. vit_base_patch16_224) to give "
                "its architecture"
            )
        state = _read_state_dict(path)
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
        model = _create_timm_model(timm_model, "--timm_model", num_classes=num_classes)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"The weights in {path} do not fit the timm model {timm_model!r}: "
                + " ".join(str(error).splitlines()[:3])
            ) from error
        return model.eval()
    if timm_model:
        raise ValueError(
            "--timm_model names the architecture of a weights file; with a model name as --input, leave it out"
        )
    return _create_timm_model(path, "--input").eval()


def _create_timm_model(name: str, flag: str, **kwargs):
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"{flag} {name!r} is not a timm model name (e.g. vit_base_patch16_224)"
            + (" nor a file" if flag == "--input" else "")
        )
    return timm.create_model(name, pretrained=False, **kwargs)


def _read_state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints wrap the weights; DataParallel prefixes them.
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    return {key.removeprefix("module."): value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _check_output(output: Path, overwrite: bool):
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; allowed: a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"--output {output} exists and is not empty; pass --overwrite to replace it")


def _write_folder(output: Path, write):
    """Run `write(folder)` on a staging folder beside `output`, then put it in place: nothing partial is left."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private
        write(staging)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@torch.no_grad()
def _max_logit_difference(source_logits, model) -> float:
    """Largest difference between the logits of the source and of the converted model on 2 random images."""
    config, weight = model.config, next(model.parameters())
    pixels = torch.randn(
        2,
        config.num_channels,
        config.image_size,
        config.image_size,
        generator=torch.Generator().manual_seed(0),
    ).to(weight)  # a bfloat16 checkpoint stays bfloat16
    expected = source_logits(pixels).float()
    return (model(pixels).logits.float() - expected).abs().max().item()


def _convert_transformers_input(args):
    """(converted model, source's logits function, image processor writer) of a Transformers folder."""
    source = _load_transformers_folder(args.input)
    model = from_transformers(source, drop_pooler=args.drop_pooler)

    def source_logits(pixels):
        output = source(pixels)
        if hasattr(output, "logits"):
            return output.logits
        return output.last_hidden_state[:, 0]

    processor_file = Path(args.input) / "preprocessor_config.json"
    # The folder's own processor where it has one; else Transformers' ViT normalization at the model's size.
    processor = _image_processor_for(model.config, [0.5], [0.5])

    def write_processor(folder: Path):
        if processor_file.is_file():
            shutil.copy(processor_file, folder / processor_file.name)
        else:
            processor.save_pretrained(folder)

    return model, source_logits, write_processor


def _convert_timm_input(args):
    """(converted model, source's logits function, image processor writer) of a timm name or weights file."""
    source = _load_timm_source(args.input, args.timm_model)
    model = from_timm(source)
    pretrained_cfg = getattr(source, "pretrained_cfg", None) or {}
    resample = {
        "bicubic": PILImageResampling.BICUBIC,
        "bilinear": PILImageResampling.BILINEAR,
        "nearest": PILImageResampling.NEAREST,
    }.get(pretrained_cfg.get("interpolation"))
    processor = _image_processor_for(
        model.config,
        pretrained_cfg.get("mean", [0.5]),
        pretrained_cfg.get("std", [0.5]),
        resample,
    )
    return model, source, processor.save_pretrained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hf_vit_reduction.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("transformers", "timm"),
        help="library of the input model",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="transformers: a local model folder; timm: a model name (random weights) or a .safetensors/.pth "
        "state dict (with --timm_model)",
    )
    parser.add_argument("--output", required=True, type=Path, help="folder to write")
    parser.add_argument("--timm_model", help="timm architecture of a state dict given as --input")
    parser.add_argument(
        "--strategy",
        default="baseline",
        # thin is accepted here only to be refused with the reason.
        choices=("baseline", *POST_HOC_STRATEGIES, "thin"),
        help="baseline converts only; shallow and grouped reduce the converted model",
    )
    parser.add_argument(
        "--reduction_mlp_ratio",
        type=float,
        help="shallow: fraction of the MLP's hidden units kept (default 0.5)",
    )
    parser.add_argument(
        "--prune_method",
        default="first",
        choices=PRUNE_METHODS,
        help="shallow: first units (the paper) or largest ||fc1 row||*||fc2 column||",
    )
    parser.add_argument(
        "--share_method",
        default="leader",
        choices=SHARE_METHODS,
        help="grouped: the group's first MLP (the paper) or the mean of its MLPs",
    )
    parser.add_argument("--mlp_share_group_size", type=int, help="grouped: blocks per MLP (default 2)")
    parser.add_argument(
        "--drop_pooler",
        action="store_true",
        help="transformers: convert a ViTModel without its pooler",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    args = parser.parse_args(argv)

    try:
        _check_output(args.output, args.overwrite)
        reduction = None
        if args.strategy != "baseline":
            reduction = {
                "strategy": args.strategy,
                "reduction_mlp_ratio": args.reduction_mlp_ratio,
                "prune_method": args.prune_method,
                "share_method": args.share_method,
                "mlp_share_group_size": args.mlp_share_group_size,
            }
            _check_reduce_arguments(**reduction)
        else:
            for flag in ("reduction_mlp_ratio", "mlp_share_group_size"):
                if getattr(args, flag) is not None:
                    raise ValueError(f"--{flag} needs --strategy shallow or grouped")
        if args.source != "timm" and args.timm_model:
            raise ValueError("--timm_model applies to --from timm only")
        if args.source != "transformers" and args.drop_pooler:
            raise ValueError("--drop_pooler applies to --from transformers only")

        convert = _convert_transformers_input if args.source == "transformers" else _convert_timm_input
        model, source_logits, write_processor = convert(args)
        difference = _max_logit_difference(source_logits, model)
        if reduction:
            model = reduce(model, **reduction)
    except ValueError as error:
        parser.error(str(error))

    def write(folder: Path):
        model.save_pretrained(folder)
        write_processor(folder)

    _write_folder(args.output, write)
    print(
        f"Wrote {args.output}: {model.config.reduction_strategy}, {model.num_parameters():,} parameters. "
        f"The converted baseline's logits differ from the source's by at most {difference:.2e} "
        "on 2 random images."
    )


if __name__ == "__main__":
    main()
