"""Strict loading of ViTReduced checkpoints: what `ViTReducedPreTrainedModel.from_pretrained` accepts.

A checkpoint loads only into the architecture it was saved with; Transformers alone would load it partially (a plain
checkpoint in a grouped model lets one block's MLP overwrite the other's, silently). The contract:

- From a folder or the Hub, the saved config must be a `vit_reduced` one, and every architecture field the caller
  asks for (`config=` or keyword arguments) must equal the saved value.
- Every weight outside the classifier must be loaded, none may be left over or resized, and a grouped model refuses
  a checkpoint that holds separate MLPs for the blocks that share one. The classifier may be missing, extra or (with
  `ignore_mismatched_sizes`) resized: that is a new head.
- `output_loading_info=True` turns these errors into one warning: the caller gets the model and the loading info to
  inspect a partial checkpoint. Without it they are a `ValueError`.
- `from_pretrained(None, config=config, state_dict=state_dict)` has no saved config to compare; the state dict is
  checked as a checkpoint is, except that an empty one (`{}`) asks for a freshly initialized model.

Kept beside the modeling file and imported relatively, so that the Hub copy of the code (remote code) carries it.
"""

import re

import torch
from transformers.utils import logging

from .configuration_vit_reduced import ARCHITECTURE_FIELDS

logger = logging.get_logger(__name__)

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def check_requested_architecture(config_class, pretrained_model_name_or_path, kwargs: dict):
    """ValueError unless the checkpoint is a ViTReduced one of the architecture that `kwargs` ask for."""
    if pretrained_model_name_or_path is None:
        return
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    saved, _ = config_class.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
    if saved.get("model_type") != config_class.model_type:
        raise ValueError(
            f"{pretrained_model_name_or_path} holds a {saved.get('model_type')!r} checkpoint, not "
            f"{config_class.model_type!r}; convert it with `hf-vit-reduction convert` instead."
        )
    checkpoint = config_class(**{key: value for key, value in saved.items() if key in ARCHITECTURE_FIELDS})
    requested = kwargs.get("config")
    # Compared by model type, not by class: under remote code the model's config class is the Hub copy's, while the
    # caller's config may come from the installed package (or from another copy).
    if getattr(requested, "model_type", None) == config_class.model_type:
        requested = {field: getattr(requested, field) for field in ARCHITECTURE_FIELDS}
    else:
        requested = {field: kwargs[field] for field in ARCHITECTURE_FIELDS if field in kwargs}
    differing = [
        f"{field}={value!r} but the checkpoint has {getattr(checkpoint, field)!r}"
        for field, value in requested.items()
        if value != getattr(checkpoint, field)
        and not (field == "reduction_strategy" and value is None and checkpoint.reduction_strategy == "baseline")
    ]
    if differing:
        raise ValueError(
            f"Cannot load {pretrained_model_name_or_path} as another architecture: {'; '.join(differing)}. "
            "Load it with its own config, or convert it with hf_vit_reduction.conversion.reduce."
        )


def describe_key_problems(problems: dict[str, list[str]]) -> str:
    """'missing keys: a, b; unexpected keys: c' for the non-empty lists (four keys each at most); '' if none."""
    return "; ".join(f"{kind} keys: {', '.join(keys[:4])}" for kind, keys in problems.items() if keys)


def check_loaded_keys(model, pretrained_model_name_or_path, loading_info: dict, state_dict, raise_error: bool):
    """Raise (or, if not `raise_error`, warn) when the loaded weights do not fill `model` exactly."""

    def outside_head(keys):
        return sorted(key for key in keys if not key.startswith("classifier."))

    problems = {
        "unexpected": outside_head(loading_info["unexpected_keys"]),
        "missing": [] if state_dict == {} else outside_head(loading_info["missing_keys"]),
        "mismatched": outside_head(key for key, *_ in loading_info["mismatched_keys"]),
    }
    details = describe_key_problems(problems)
    if not details:
        return
    source = "the given state dict" if pretrained_model_name_or_path is None else pretrained_model_name_or_path
    message = f"The weights in {source} do not fit this model ({details})."
    if any(key in model.all_tied_weights_keys for key in problems["unexpected"]):
        message += " A grouped model holds one MLP per group, stored under the group's first block."
    if raise_error:
        raise ValueError(message)
    logger.warning(message)


def without_repeated_shared_tensors(state_dict: dict, config) -> dict:
    """`state_dict` without the keys of a grouped model's shared MLPs repeated under their group's later blocks.

    A grouped model's own `state_dict()` lists a shared tensor under every block of its group; those repeats are the
    same tensor and load as such. A later block's MLP that differs from its group's is left in, and loading reports it.
    """
    if getattr(config, "reduction_strategy", None) != "grouped":
        return state_dict

    def repeats_its_first_block(key: str) -> bool:
        match = re.fullmatch(r"(.*layers\.)(\d+)(\.mlp\..+)", key)
        if match is None:
            return False
        first = config.first_block_of_mlp(int(match[2]))
        first_key = f"{match[1]}{first}{match[3]}"
        return (
            first != int(match[2]) and first_key in state_dict and torch.equal(state_dict[first_key], state_dict[key])
        )

    return {key: value for key, value in state_dict.items() if not repeats_its_first_block(key)}
