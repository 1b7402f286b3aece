"""timm's VisionTransformer (a model or its state dict) -> a baseline ViTReduced with the same logits."""

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..configuration_vit_reduced import SHAPE_FIELDS, ViTReducedConfig
from ..modeling_vit_reduced import ViTReducedForImageClassification
from .building import build_with_weights

# Fields that `reduce` sets; a converter always returns a baseline.
_REDUCTION_FIELDS = (
    "reduction_strategy",
    "reduction_mlp_ratio",
    "mlp_share_group_size",
)


def _with_overrides(derived: dict, overrides: dict, fixed: tuple[str, ...]) -> dict:
    """`derived` updated by `overrides`, refusing overrides of reduction fields and of fields the weights fix."""
    for field in _REDUCTION_FIELDS:
        if field in overrides:
            raise ValueError(
                f"{field}={overrides[field]!r} cannot be set while converting; the converters return a "
                "baseline: reduce it with hf_vit_reduction.conversion.reduce"
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


# State-dict keys of timm features that ViTReduced does not have, and the features' names.
_TIMM_FEATURES = (
    ("reg_token", "register tokens (reg_tokens > 0)"),
    ("dist_token", "a distillation token and its head (a distilled DeiT)"),
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
    return build_with_weights(ViTReducedForImageClassification, config, _timm_state_to_ours(state, config))


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
    require(
        getattr(model, "dist_token", None) is None,
        "a distillation token and its head (a distilled DeiT: a second class token attended to by every block)",
    )
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
    """The config's labels from `timm_label_names`; none where the model names none."""
    names = timm_label_names(model)
    if names is None or len(names) != model.num_classes:
        return {}
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def timm_label_names(model) -> list[str] | None:
    """The class names of a timm model by index, as a user reads them in a card and in pipeline output: the
    `label_names` of its pretrained_cfg (a saved model's config), or for a head of an ImageNet subset ImageNet's
    descriptions ("tench, Tinca tinca"), the synset id added to the two names ImageNet repeats ("crane", "maillot");
    None otherwise. Conversion and evaluation both read a timm model's labels here."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    saved = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if saved:
        if isinstance(saved, dict):
            return [saved.get(i, saved.get(str(i))) for i in range(len(saved))]
        return list(saved)
    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != model.num_classes:
        return None
    names = [info.index_to_description(index) for index in range(model.num_classes)]
    # label2id needs unique names; ImageNet has two "crane"s and two "maillot"s.
    return [
        f"{name} ({info.index_to_label_name(index)})" if names.count(name) > 1 else name
        for index, name in enumerate(names)
    ]


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
            (prefix + "mlp.fc1", "mlp.fc1"),
            (prefix + "mlp.fc2", "mlp.fc2"),
        ):
            weight = state[f"{theirs}{their_name}.weight"]
            ours[ours_name + ".weight"] = weight
            ours[ours_name + ".bias"] = bias(f"{theirs}{their_name}.bias", weight)
    if config.num_labels > 0:
        ours["classifier.weight"] = state["head.weight"]
        ours["classifier.bias"] = bias("head.bias", state["head.weight"])
    with torch.no_grad():
        return {key: value.detach().clone() for key, value in ours.items()}
