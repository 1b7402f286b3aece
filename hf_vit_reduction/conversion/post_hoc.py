"""Post-hoc reduction: a trained baseline ViTReduced cut to `shallow` or shared to `grouped`."""

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..configuration_vit_reduced import ViTReducedConfig
from .building import build_with_weights
from .calibration import Calibration, activation_importance, group_correlations, taylor_importance

POST_HOC_STRATEGIES = ("shallow", "grouped")
PRUNE_METHODS = ("first", "magnitude", "activation", "taylor")  # UNIT_SCORES holds how each ranks units
SHARE_METHODS = ("leader", "mean", "aligned")
# The methods that rank or match hidden units by what they do on calibration images.
CALIBRATED_METHODS = ("activation", "taylor", "aligned")


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


def needs_calibration(prune_method: str = "first", share_method: str = "leader") -> bool:
    return prune_method in CALIBRATED_METHODS or share_method in CALIBRATED_METHODS


def reduce(
    model,
    strategy: str,
    *,
    reduction_mlp_ratio: float | None = None,
    prune_method: str = "first",
    share_method: str = "leader",
    mlp_share_group_size: int | None = None,
    calibration: Calibration | None = None,
):
    """A new model: the baseline `model` reduced to `strategy` after the fact. `model` is left as it is.

    - `shallow` keeps `int(intermediate_size * reduction_mlp_ratio)` hidden units of every MLP (default ratio 0.5):
      `prune_method="first"` the first ones (the paper's slice: fc1 rows, fc2 columns; fc2's bias is kept), or
      `"magnitude"` those with the largest ||fc1 row|| * ||fc2 column||, `"activation"` those with the largest mean
      |activation| on the calibration images, or `"taylor"` those with the largest first-order loss change
      (|activation x gradient|, with the labels); the kept units stay in their original order.
    - `grouped` gives each group of `mlp_share_group_size` blocks (default 2) one MLP: `share_method="leader"` the
      group's first block's (the paper), `"mean"` the average of the group's MLP weights, or `"aligned"` that
      average after each member's hidden units are permuted to match the leader's (the assignment maximizing the
      summed correlation of their activations on the calibration images, solved exactly by scipy's
      `linear_sum_assignment`; a permutation does not change what a member computes). Trained weights are
      not scaled by 1/sqrt(2): that is the paper's init of a fresh shared MLP, which the config records as
      `reduction_mlp_ratio` and which only applies when a model is initialized.
    - `thin` is not a reduction of trained weights: it is an error that says to use `shallow`.
    Everything outside the MLPs is copied; the config is the baseline's with the new strategy.
    `calibration` (`conversion.calibration.load_calibration`) is needed by `activation`, `taylor` and `aligned`.
    """
    check_reduce_arguments(strategy, reduction_mlp_ratio, prune_method, share_method, mlp_share_group_size)
    if needs_calibration(prune_method, share_method) and calibration is None:
        method = prune_method if prune_method in CALIBRATED_METHODS else share_method
        raise ValueError(f"method {method!r} ranks hidden units on data; pass calibration=load_calibration(...)")
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

    encoder = _encoder(model)
    prefix = "vit.layers." if encoder is not model else "layers."
    method = prune_method if strategy == "shallow" else share_method
    with torch.no_grad():
        leaders = CUTS[strategy](model, new_config, method=method, calibration=calibration)
        state = {key: value.clone() for key, value in model.state_dict().items() if ".mlp." not in key}
        for index in range(len(encoder.layers)):
            # The other blocks of a group hold their first block's MLP: the same tensors, stored once.
            mlp_state = leaders[new_config.first_block_of_mlp(index)]
            state.update({f"{prefix}{index}.mlp.{name}": value for name, value in mlp_state.items()})
    return build_with_weights(type(model), new_config, state, training=model.training)


def _pruned_mlps(model, config, *, method: str, calibration) -> dict[int, dict]:
    """shallow: every block's MLP keeping the `config.mlp_hidden_size` units `method` scores highest."""
    scores = UNIT_SCORES[method](model, calibration)
    mlps = {}
    for index, mlp in enumerate(_mlps(_encoder(model))):
        keep = _kept_units(scores[index], config.mlp_hidden_size)
        mlps[index] = {
            "fc1.weight": mlp.fc1.weight[keep].clone(),
            "fc1.bias": mlp.fc1.bias[keep].clone(),
            "fc2.weight": mlp.fc2.weight[:, keep].clone(),
            "fc2.bias": mlp.fc2.bias.clone(),
        }
    return mlps


def _shared_mlps(model, config, *, method: str, calibration) -> dict[int, dict]:
    """grouped: for each group's first block, the mean of the MLPs `method` picks, each with its units reordered
    as `method` matches them to the leader's."""
    mlps = _mlps(_encoder(model))
    groups = [
        list(range(first, min(first + config.mlp_share_group_size, len(mlps))))
        for first in range(0, len(mlps), config.mlp_share_group_size)
    ]
    members = SHARED_MEMBERS[method](model, groups, calibration)
    shared = {}
    for group in groups:
        states = [
            permuted_units(dict(mlps[member].named_parameters()), members[member])
            for member in group
            if member in members
        ]
        # Averaged in float32 so that a bfloat16 model's mean is rounded once.
        shared[group[0]] = {
            name: torch.stack([state[name] for state in states]).float().mean(0).to(param)
            for name, param in mlps[group[0]].named_parameters()
        }
    return shared


def _leader(model, groups, calibration) -> dict:
    """The paper: the group's first MLP alone."""
    return {group[0]: None for group in groups}


def _every_member(model, groups, calibration) -> dict:
    return {member: None for group in groups for member in group}


def _aligned_members(model, groups, calibration) -> dict:
    """Every member, its units permuted to the leader's by the correlation of their activations."""
    correlations = group_correlations(model, calibration, groups)
    return {
        **{group[0]: None for group in groups},
        **{member: matching_permutation(correlation) for (_, member), correlation in correlations.items()},
    }


# How each cut builds the MLPs of the blocks that hold one: fn(model, new config, method=, calibration=).
CUTS = {"shallow": _pruned_mlps, "grouped": _shared_mlps}
# Which MLPs each share method averages: fn(model, groups, calibration) -> {member: unit permutation or None}.
SHARED_MEMBERS = {"leader": _leader, "mean": _every_member, "aligned": _aligned_members}


def _encoder(model):
    return model.vit if hasattr(model, "vit") else model


def _mlps(encoder) -> list[nn.Module]:
    return [layer.mlp for layer in encoder.layers]


def _no_scores(model, calibration) -> list[None]:
    """The paper's slice: no ranking, the first units are kept."""
    return [None] * len(_encoder(model).layers)


def _magnitude_scores(model, calibration) -> list[torch.Tensor]:
    """A unit's contribution is bounded by the norms of its input row and output column."""
    return [mlp.fc1.weight.float().norm(dim=1) * mlp.fc2.weight.float().norm(dim=0) for mlp in _mlps(_encoder(model))]


# How each prune method scores every block's hidden units: fn(model, calibration) -> per block, scores or None.
UNIT_SCORES = {
    "first": _no_scores,
    "magnitude": _magnitude_scores,
    "activation": activation_importance,
    "taylor": taylor_importance,
}


def _kept_units(scores: torch.Tensor | None, width: int):
    """The hidden units with the `width` largest scores (the first ones without scores), in their original order."""
    if scores is None:
        return slice(0, width)
    return scores.topk(width).indices.sort().values


def matching_permutation(correlation: torch.Tensor) -> torch.Tensor:
    """`permutation[i]`: the member unit matched to leader unit i, maximizing the summed correlation (exactly)."""
    rows, columns = linear_sum_assignment(correlation.cpu().numpy(), maximize=True)
    return torch.as_tensor(columns[rows.argsort()], dtype=torch.long)


def permuted_units(mlp_state: dict, permutation: torch.Tensor | None) -> dict:
    """An MLP's fc1/fc2 weights with its hidden units reordered; the MLP computes the same function."""
    if permutation is None:
        return mlp_state
    return {
        "fc1.weight": mlp_state["fc1.weight"][permutation],
        "fc1.bias": mlp_state["fc1.bias"][permutation],
        "fc2.weight": mlp_state["fc2.weight"][:, permutation],
        "fc2.bias": mlp_state["fc2.bias"],
    }
