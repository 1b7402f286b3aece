"""timm's VisionTransformer (a model or its state dict) -> a baseline ViTReduced with the same logits."""

import math
import re
from collections.abc import Mapping

import torch
from torch import nn

from ..configuration_vit_reduced import FAMILY_FIELDS, POOLINGS, SHAPE_FIELDS, ViTReducedConfig
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
    (".q_norm.", "qk_norm"),
    (".k_norm.", "qk_norm"),
    (".attn.norm.", "scale_attn_norm"),
    (".mlp.norm.", "scale_mlp_norm"),
    (".mlp.fc1_g.", "SwiGLU MLPs"),
    (".mlp.w12.", "SwiGLU MLPs"),
    (".attn.gate.", "gated attention"),
    ("patch_embed.norm.", "a norm in the patch embedding"),
    ("rope", "rotary position embeddings (RoPE)"),
    ("relative_position", "relative position bias"),
)
# timm models that are not a VisionTransformer, by class, and what in them ViTReduced cannot represent.
_OTHER_TIMM_FAMILIES = {
    "Eva": "rotary position embeddings (RoPE) and SwiGLU MLPs (EVA, timm's rope ViTs)",
    "Beit": "relative position bias (BEiT)",
    "VisionTransformerRelPos": "relative position bias",
    "VisionTransformerSAM": "relative position bias and windowed attention (SAM)",
}


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

    The ViT family converts: class token or not, a distillation token and head (distilled DeiT), register tokens,
    `no_embed_class`, LayerScale, pre-norm, token/average/attention (MAP) pooling and `fc_norm` become the config's
    options; LayerNorm eps, activation, dropouts, image and patch size are copied; ImageNet class names become the
    labels where timm knows them. What ViTReduced cannot represent (RoPE, relative position bias, SwiGLU, qk_norm,
    dynamic image size, ...) is a ValueError naming it. A state dict does not record the number of heads: pass
    `num_attention_heads=` (and `layer_norm_eps=`/`hidden_act=`/`pooling=` if not timm's 1e-6, exact GELU and the
    pooling its keys suggest: MAP with `attn_pool`, else the class token unless `fc_norm` or no class token).
    `config_overrides` set further config fields (labels, drop rates); fields the weights fix must agree with them.
    Biases a timm layer lacks (`proj_bias=False`) become zeros, which compute the same.
    """
    if isinstance(model_or_state_dict, nn.Module):
        derived, fixed = _describe_timm_model(model_or_state_dict)
        state = model_or_state_dict.state_dict()
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
    names = _timm_names(config)
    _check_timm_keys(state, names)
    return build_with_weights(ViTReducedForImageClassification, config, _timm_state_to_ours(state, names))


# The options of the ViT family, read off a timm VisionTransformer: config field -> its value in the model.
_TIMM_OPTIONS = {
    "class_token": lambda model: model.has_class_token,
    "distillation_token": lambda model: getattr(model, "dist_token", None) is not None,
    "num_register_tokens": lambda model: model.num_reg_tokens,
    "no_embed_class": lambda model: model.no_embed_class,
    # The scales' initial value is not kept; it only matters to a re-initialization: timm's LayerScale default.
    "layer_scale_init_value": lambda model: 1e-5 if hasattr(model.blocks[0].ls1, "gamma") else None,
    "pre_norm": lambda model: isinstance(model.norm_pre, nn.LayerNorm),
    "pooling": lambda model: model.global_pool,
    "fc_norm": lambda model: isinstance(model.fc_norm, nn.LayerNorm),
}


def _timm_requirements(model) -> list[tuple[bool, str]]:
    """(holds, what ViTReduced cannot represent unless it holds), for a timm VisionTransformer and its blocks."""
    from timm.layers import Attention, AttentionPoolLatent, LayerScale, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block

    patch_embed, pool = model.patch_embed, model.attn_pool
    width = getattr(getattr(model.blocks[0].mlp, "fc1", None), "out_features", None)
    requirements = [
        (model.global_pool in POOLINGS, f"global_pool={model.global_pool!r} (allowed: {', '.join(POOLINGS)})"),
        (
            model.global_pool == "token" or not (model.pool_include_prefix and model.num_prefix_tokens),
            "pooling over the prefix tokens too (pool_include_prefix=True)",
        ),
        (model.pos_embed is not None, "no position embedding (pos_embed='none')"),
        (not model.dynamic_img_size, "dynamic_img_size=True"),
        (isinstance(model.patch_drop, nn.Identity), "patch dropout (patch_drop_rate > 0)"),
        (
            isinstance(model.norm, nn.LayerNorm) != isinstance(model.fc_norm, nn.LayerNorm),
            "no final LayerNorm (final_norm=False)",
        ),
        (model.head_drop.p == 0, f"head dropout drop_rate={model.head_drop.p} (set it to 0 to convert without it)"),
        (
            type(patch_embed) is PatchEmbed
            and patch_embed.flatten
            and isinstance(patch_embed.norm, nn.Identity)
            and not patch_embed.dynamic_img_pad,
            "a non-standard patch embedding",
        ),
        (
            len(set(patch_embed.img_size)) == 1 and len(set(patch_embed.patch_size)) == 1,
            f"non-square img_size={patch_embed.img_size} or patch_size={patch_embed.patch_size}",
        ),
        (
            pool is None
            or (
                type(pool) is AttentionPoolLatent
                and (pool.latent_len, pool.pool, pool.pos_embed) == (1, "token", None)
                and isinstance(pool.q_norm, nn.Identity)
                and pool.q.bias is not None
                and type(pool.mlp) is Mlp
                and pool.mlp.fc1.out_features == width
            ),
            "an attention pool other than one latent query with a plain MLP as wide as the blocks'",
        ),
    ]
    for index, block in enumerate(model.blocks):
        if type(block) is not Block:
            requirements.append((False, f"blocks.{index} is a {type(block).__name__} (only timm's pre-norm Block)"))
            continue
        attn, mlp = block.attn, block.mlp
        requirements += [
            (
                type(attn) is Attention and attn.num_heads * attn.head_dim == model.embed_dim,
                f"blocks.{index}.attn is not a standard multi-head attention",
            ),
            (
                type(attn) is not Attention
                or all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm)),
                "qk_norm or scale_attn_norm",
            ),
            (
                type(block.ls1) is type(block.ls2) and type(block.ls1) in (nn.Identity, LayerScale),
                "layer scale other than timm's LayerScale on both branches",
            ),
            (
                type(mlp) is Mlp and isinstance(mlp.norm, nn.Identity),
                "SwiGLU MLPs"
                if "glu" in type(mlp).__name__.lower()
                else f"{type(mlp).__name__} MLPs (only a plain fc1-act-fc2 MLP)",
            ),
        ]
    return requirements


def _describe_timm_model(model) -> tuple[dict, tuple[str, ...]]:
    """Config fields of a timm VisionTransformer, or a ValueError naming everything ViTReduced lacks."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        if feature := _OTHER_TIMM_FAMILIES.get(type(model).__name__):
            raise ValueError(f"Cannot convert this timm {type(model).__name__}; ViTReduced cannot represent {feature}")
        raise TypeError(
            f"model_or_state_dict is a {type(model).__name__}; allowed: a timm VisionTransformer or its state dict"
        )
    problems = [feature for holds, feature in _timm_requirements(model) if not holds]
    if not problems:
        problems, uniform = _timm_uniform_blocks(model)
    if problems:
        raise ValueError(
            "Cannot convert this timm VisionTransformer; ViTReduced cannot represent: "
            + "; ".join(dict.fromkeys(problems))
        )
    patch_embed, attn = model.patch_embed, model.blocks[0].attn
    derived = {
        "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": attn.num_heads,
        "intermediate_size": model.blocks[0].mlp.fc1.out_features,
        **uniform,
        "hidden_dropout_prob": model.pos_drop.p,
        "attention_probs_dropout_prob": attn.attn_drop.p,
        "image_size": patch_embed.img_size[0],
        "patch_size": patch_embed.patch_size[0],
        "num_channels": patch_embed.proj.in_channels,
        "qkv_bias": attn.qkv.bias is not None,
        **{field: read(model) for field, read in _TIMM_OPTIONS.items()},
        "num_labels": model.num_classes,
        **_timm_labels(model),
    }
    return derived, (*SHAPE_FIELDS, *FAMILY_FIELDS)


def _timm_uniform_blocks(model) -> tuple[list[str], dict]:
    """(problems, {activation, eps, drop path}): what ViTReduced holds once for all blocks must agree across them."""
    pool_mlp = [model.attn_pool.mlp] if model.attn_pool is not None else []
    mlps = [block.mlp for block in model.blocks] + pool_mlp
    norms = [n for n in (model.norm_pre, model.norm, model.fc_norm) if not isinstance(n, nn.Identity)]
    norms += [norm for block in model.blocks for norm in (block.norm1, block.norm2)]
    norms += [model.attn_pool.norm] if pool_mlp else []
    acts = {_timm_act_name(mlp.act) or f"{type(mlp.act).__name__} activation" for mlp in mlps}
    eps = {norm.eps for norm in norms if isinstance(norm, nn.LayerNorm)}
    depth, drop_paths = len(model.blocks), [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
    last = drop_paths[-1]
    checks = [
        (len({(b.attn.num_heads, b.mlp.fc1.out_features) for b in model.blocks}) == 1, "blocks of different widths"),
        (len(acts) == 1 and not next(iter(acts)).endswith(" activation"), " or ".join(sorted(acts))),
        (
            all(isinstance(n, nn.LayerNorm) and n.elementwise_affine and n.bias is not None for n in norms),
            "a norm that is not an affine LayerNorm (e.g. RmsNorm)",
        ),
        (len(eps) == 1, f"LayerNorms with different eps {sorted(eps)}"),
        (
            all(b.mlp.drop1.p == 0 and b.attn.proj_drop.p == b.mlp.drop2.p == model.pos_drop.p for b in model.blocks),
            "proj_drop_rate > 0 (a dropout inside the MLP); set it to 0 to convert without it",
        ),
        (
            all(math.isclose(r, last * i / max(depth - 1, 1), abs_tol=1e-6) for i, r in enumerate(drop_paths)),
            f"drop path rates {drop_paths} that do not rise linearly from 0",
        ),
    ]
    problems = [feature for holds, feature in checks if not holds]
    if problems:
        return problems, {}
    return [], {"hidden_act": acts.pop(), "layer_norm_eps": eps.pop(), "drop_path_rate": last}


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


# The options of the ViT family, read off a timm state dict's keys: config field -> its value.
_TIMM_STATE_OPTIONS = {
    "class_token": lambda state: "cls_token" in state,
    "distillation_token": lambda state: "dist_token" in state,
    "num_register_tokens": lambda state: state["reg_token"].shape[1] if "reg_token" in state else 0,
    "layer_scale_init_value": lambda state: 1e-5 if "blocks.0.ls1.gamma" in state else None,
    "pre_norm": lambda state: "norm_pre.weight" in state,
    "fc_norm": lambda state: "fc_norm.weight" in state,
}


def _describe_timm_state_dict(state: dict, overrides: dict) -> tuple[dict, tuple[str, ...]]:
    """Config fields that the keys and shapes of a timm ViT state dict fix."""
    if "num_attention_heads" not in overrides:
        raise ValueError(
            "num_attention_heads is required with a state dict, which does not record it "
            "(e.g. from_timm(state_dict, num_attention_heads=12) for vit_base_patch16_224)"
        )
    features = [feature for pattern, feature in _TIMM_FEATURES if any(pattern in key for key in state)]
    if features:
        raise ValueError(
            "Cannot convert this timm state dict; ViTReduced cannot represent " + ", ".join(dict.fromkeys(features))
        )
    blocks = {int(key.split(".")[1]) for key in state if key.startswith("blocks.")}
    if not blocks:
        raise ValueError("The timm state dict has no blocks")
    options = {field: read(state) for field, read in _TIMM_STATE_OPTIONS.items()}
    if "attn_pool.latent" in state:
        options["pooling"] = "map"
    else:
        options["pooling"] = "token" if options["class_token"] and not options["fc_norm"] else "avg"
    needed = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight")
    missing = [key for key in needed if key not in state]
    if missing:
        raise ValueError(f"The timm state dict lacks {', '.join(missing)}")
    if state["blocks.0.mlp.fc1.weight"].shape[0] != state["blocks.0.mlp.fc2.weight"].shape[1]:
        raise ValueError(
            "Cannot convert this timm state dict; ViTReduced cannot represent SwiGLU MLPs (fc1 is wider than fc2's "
            "input: a gated MLP)"
        )
    projection = state["patch_embed.proj.weight"]
    if projection.shape[-1] != projection.shape[-2]:
        raise ValueError(
            f"patch size {tuple(projection.shape[-2:])} is not square; ViTReduced supports square patches only"
        )
    prefix = int(options["class_token"]) + int(options["distillation_token"]) + options["num_register_tokens"]
    positions = state["pos_embed"].shape[1]
    # timm's default embeds the prefix tokens' positions; no_embed_class embeds the patches' only.
    options["no_embed_class"] = math.isqrt(positions - prefix) ** 2 != positions - prefix
    patches = positions - (0 if options["no_embed_class"] else prefix)
    grid = math.isqrt(patches)
    if grid * grid != patches:
        raise ValueError(
            f"pos_embed holds {positions} positions: neither the {prefix} prefix tokens plus a square grid nor a "
            "square grid (non-square images are not supported)"
        )
    derived = {
        "hidden_size": projection.shape[0],
        "num_hidden_layers": max(blocks) + 1,
        "intermediate_size": state["blocks.0.mlp.fc1.weight"].shape[0],
        "image_size": grid * projection.shape[-1],
        "patch_size": projection.shape[-1],
        "num_channels": projection.shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        **options,
        "num_labels": state["head.weight"].shape[0] if "head.weight" in state else 0,
    }
    fixed = tuple(key for key in derived if key not in ("num_labels", "pooling"))
    return derived, fixed


def _timm_names(config: ViTReducedConfig) -> dict[str, str]:
    """Each of our weights' keys -> the timm key that holds it, for a baseline of `config` (a table of renames)."""
    renames = (
        (r"vit\.embeddings\.cls_token", "cls_token"),
        (r"vit\.embeddings\.distillation_token", "dist_token"),
        (r"vit\.embeddings\.register_tokens", "reg_token"),
        (r"vit\.embeddings\.position_embeddings", "pos_embed"),
        (r"vit\.embeddings\.projection\.", "patch_embed.proj."),
        (r"vit\.pre_layernorm\.", "norm_pre."),
        (r"vit\.layernorm\.", "fc_norm." if config.fc_norm else "norm."),
        (r"vit\.layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
        (r"vit\.layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
        (r"vit\.layers\.(\d+)\.attention\.", r"blocks.\1.attn."),
        (r"vit\.layers\.(\d+)\.layer_scale(\d)\.", r"blocks.\1.ls\2."),
        (r"vit\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
        (r"vit\.attention_pool\.ffn_", "attn_pool.mlp."),
        (r"vit\.attention_pool\.", "attn_pool."),
        (r"classifier\.", "head."),
        (r"distillation_classifier\.", "head_dist."),
    )
    with torch.device("meta"):
        keys = ViTReducedForImageClassification(config).state_dict().keys()
    names = {}
    for key in keys:
        pattern, replacement = next((p, r) for p, r in renames if re.match(p, key))
        names[key] = re.sub(f"^{pattern}", replacement, key)
    return names


def _check_timm_keys(state: dict, names: dict[str, str]):
    """ValueError unless the timm weights are exactly those `names` reads (a bias may be missing: it is zero)."""
    unexpected = sorted(set(state) - set(names.values()))
    missing = sorted(key for key in names.values() if key not in state and not key.endswith(".bias"))
    if unexpected:
        features = [feature for pattern, feature in _TIMM_FEATURES if any(pattern in key for key in unexpected)]
        raise ValueError(
            "Cannot convert this timm state dict; ViTReduced cannot represent "
            + (", ".join(dict.fromkeys(features)) or "its extra weights")
            + f" (keys: {', '.join(unexpected[:4])})"
        )
    if missing:
        raise ValueError(f"The timm state dict lacks {', '.join(missing[:4])}, which its other weights need")


def _timm_state_to_ours(state: dict, names: dict[str, str]) -> dict:
    def weight(theirs: str) -> torch.Tensor:
        if theirs in state:
            return state[theirs]
        # A layer built without bias computes what one with a zero bias does.
        return state[theirs.removesuffix("bias") + "weight"].new_zeros(
            state[theirs.removesuffix("bias") + "weight"].shape[0]
        )

    with torch.no_grad():
        return {ours: weight(theirs).detach().clone() for ours, theirs in names.items()}
