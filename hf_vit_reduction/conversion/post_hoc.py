"""Post-hoc reduction: a trained baseline ViTReduced cut to `shallow` or shared to `grouped`."""

import torch
from torch import nn

from ..configuration_vit_reduced import ViTReducedConfig
from .building import build_with_weights

POST_HOC_STRATEGIES = ("shallow", "grouped")
PRUNE_METHODS = ("first", "magnitude")
SHARE_METHODS = ("leader", "mean")


def _allowed(values) -> str:
    return ", ".join(map(repr, values))


def check_reduce_arguments(strategy, reduction_mlp_ratio, prune_method, share_method, mlp_share_group_size):
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
    *,
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
    check_reduce_arguments(strategy, reduction_mlp_ratio, prune_method, share_method, mlp_share_group_size)
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
    prefix = "vit.layers." if encoder is not model else "layers."
    with torch.no_grad():
        state = {key: value.clone() for key, value in model.state_dict().items() if ".mlp." not in key}
        for index, layer in enumerate(encoder.layers):
            first = new_config.first_block_of_mlp(index)
            if first != index:
                # The other blocks of a group hold their first block's MLP: the same tensors, stored once.
                names = [name for name, _ in layer.mlp.named_parameters()]
                state.update({f"{prefix}{index}.mlp.{name}": state[f"{prefix}{first}.mlp.{name}"] for name in names})
                continue
            if strategy == "shallow":
                keep = _kept_units(layer.mlp, new_config.mlp_hidden_size, prune_method)
                mlp_state = {
                    "fc1.weight": layer.mlp.fc1.weight[keep],
                    "fc1.bias": layer.mlp.fc1.bias[keep],
                    "fc2.weight": layer.mlp.fc2.weight[:, keep],
                    "fc2.bias": layer.mlp.fc2.bias,
                }
            else:
                members = encoder.layers[first : first + new_config.mlp_share_group_size]
                if share_method == "leader":
                    members = members[:1]
                # Averaged in float32 so that a bfloat16 model's mean is rounded once.
                mlp_state = {
                    name: torch.stack([member.mlp.get_parameter(name) for member in members]).float().mean(0).to(param)
                    for name, param in layer.mlp.named_parameters()
                }
            state.update({f"{prefix}{index}.mlp.{name}": value.clone() for name, value in mlp_state.items()})
    return build_with_weights(type(model), new_config, state, training=model.training)


def _kept_units(mlp: nn.Module, width: int, prune_method: str):
    """The hidden units of `mlp` that a shallow MLP of `width` keeps, in their original order."""
    if prune_method == "first":
        return slice(0, width)
    # A unit's contribution is bounded by the norms of its input row and output column.
    scores = mlp.fc1.weight.float().norm(dim=1) * mlp.fc2.weight.float().norm(dim=0)
    return scores.topk(width).indices.sort().values
