"""The conversion command: a pretrained ViT in, a ready ViTReduced model folder out.

Converts a 🤗 Transformers or timm ViT to a baseline whose logits equal the source's (`hf_vit_reduction.conversion`),
optionally reduces it after the fact to `shallow` or `grouped`, and writes weights, config, code and image processor:

    hf-vit-reduction convert --from transformers --input google/vit-base-patch16-224 --output_dir out
    hf-vit-reduction convert --from timm --input vit_base_patch16_224.augreg2_in21k_ft_in1k --output_dir out \
        --strategy shallow
    hf-vit-reduction convert --from timm --input timm-folder-or-hub-id --output_dir out
    hf-vit-reduction convert --from timm --input weights.safetensors --timm_model vit_base_patch16_224 \\
        --output_dir out --strategy grouped --share_method mean
    hf-vit-reduction convert --from vit_reduced --input trained-baseline --output_dir out \\
        --strategy shallow --prune_method activation --calibration_samples 256 --train_dir train/

`activation`, `taylor` and `aligned` rank or match hidden units on calibration images: a seeded sample of the
training split of `--dataset_name` / `--train_dir` (the embedded digits without either), transformed as the model's
image processor does. A training split with fewer images than `--calibration_samples` is refused.

A model is a local folder (it wins) or a Hub id, downloaded into the Hub cache at --revision with --hub_token or
HF_TOKEN (`hub.locating`). The sources: Transformers' ViTForImageClassification and ViTModel (a non-distilled DeiT
from the Hub is saved as one), timm's vit_* and deit_* (a folder or Hub repository as timm saves it, which
`--from transformers` reads as timm too, a weights file, or a registry name NAME[.TAG] with the pretrained weights
timm's registry names, random ones only with --random_weights), and this package's baselines. Other families (DeiT's
distillation token, BEiT, DINOv2, Swin, CLIP, ...) are refused in one line naming what ViTReduced cannot represent.
The output folder's processor is the source's preprocessing (its saved processor, or its library's default), which
calibration uses too. `from_transformers`, `from_timm` and `reduce` are importable from here as from
`hf_vit_reduction.conversion`.
"""

import argparse
import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
from transformers import AutoImageProcessor

from ..cli import command_parser
from ..hub.locating import fetch_timm_pretrained, locate_model
from ..hub.model_card import write_model_card
from ..hub.provenance import write_provenance
from ..image_processing_vit_reduced import CROP_MODES, Preprocessing, preprocessing_of
from ..modeling_vit_reduced import ViTReducedForImageClassification
from . import from_timm, from_transformers, reduce
from .calibration import DEFAULT_CALIBRATION_SAMPLES, load_calibration
from .post_hoc import POST_HOC_STRATEGIES, PRUNE_METHODS, SHARE_METHODS, check_reduce_arguments, needs_calibration
from .transformers_vit import load_transformers_folder, reference_output
from .writing import check_output_folder, max_logit_difference, write_folder

__all__ = ["from_timm", "from_transformers", "main", "reduce"]


@dataclasses.dataclass
class Source:
    """A loaded source: its converted baseline, the source's own logits, and the preprocessing its processor
    (or, without one, its library's default) says it expects."""

    model: ViTReducedForImageClassification
    logits: Callable[[torch.Tensor], torch.Tensor]
    preprocessing: Preprocessing
    described: str  # what the provenance and card name as the source: a path, `org/name@commit`, a timm name


def _checked(preprocessing: Preprocessing, model, where: str) -> Preprocessing:
    if preprocessing.image_size != model.config.image_size:
        raise ValueError(
            f"{where} crops {preprocessing.image_size} px images; the model takes {model.config.image_size} px"
        )
    return preprocessing


def _saved_preprocessing(folder: str, model) -> Preprocessing:
    """The preprocessing of the image processor saved in `folder`; where it has none, Transformers' ViT default
    (`ViTImageProcessor()`: squash to the model's size, bilinear, mean = std = 0.5)."""
    where = f"the image processor in {folder}"
    if not (Path(folder) / "preprocessor_config.json").is_file():
        half = (0.5,) * model.config.num_channels
        return Preprocessing(model.config.image_size, 1.0, "squash", "bilinear", half, half)
    return _checked(preprocessing_of(AutoImageProcessor.from_pretrained(folder), where), model, where)


def _load_timm_source(
    path: str, timm_model: str | None, image_size: int | None, *, hub: dict, random_weights: bool
) -> tuple[object, str]:
    """A timm model and what it is, for the provenance: a saved folder (timm's `save_for_hf`, as a Hub download
    is: config.json with its pretrained_cfg, and weights) or Hub id of one (`org/name`, `hf-hub:org/name`), a state
    dict file of `timm_model`'s architecture, or a registry name `NAME[.TAG]` with the pretrained weights timm's
    registry names for it (random weights only with `random_weights`). `hub` is `locate_model`'s revision and token.

    `image_size` builds the architecture at another size than its name's (timm's `img_size`), e.g. for weights
    fine-tuned at 384 px under a 224 px name.
    """
    size = {} if image_size is None else {"img_size": image_size}
    if random_weights and (os.path.exists(path) or "/" in path or path.startswith("hf-hub:")):
        raise ValueError(f"--random_weights applies to a timm model name; --input {path} holds its own weights")
    if os.path.isfile(path):
        return _load_timm_weights_file(path, timm_model, image_size, size), path
    if os.path.isdir(path) or "/" in path:
        located = locate_model(path.removeprefix("hf-hub:"), flag="--input", **hub)
        return _load_timm_folder(located.folder, timm_model, size, name=path), located.describe()
    if timm_model:
        raise ValueError(
            "--timm_model names the architecture of a weights file; with a model name as --input, leave it out"
        )
    if hub["revision"] is not None:
        raise ValueError(f"--revision applies to a Hub id; --input {path} is a timm model name (NAME[.TAG])")
    model = _create_timm_model(path, random_weights=random_weights, **size).eval()
    return model, _timm_name_source(path, random_weights)


def _load_timm_weights_file(path: str, timm_model: str | None, image_size: int | None, size: dict):
    if not timm_model:
        raise ValueError(
            f"--input {path} is a weights file; pass --timm_model NAME (e.g. vit_base_patch16_224) to give "
            "its architecture"
        )
    state = _read_state_dict(path)
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    model = _create_timm_architecture(timm_model, "--timm_model", num_classes=num_classes, **size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"The weights in {path} do not fit the timm model {timm_model!r}"
            + (f" at --image_size {image_size}" if image_size else " (at another image size, pass --image_size)")
            + ": "
            + " ".join(str(error).splitlines()[:3])
        ) from error
    return model.eval()


def _load_timm_folder(path: str, timm_model: str | None, size: dict, *, name: str):
    import timm

    if timm_model:
        raise ValueError("--timm_model names the architecture of a weights file; a saved folder records its own")
    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"--input {name} has no config.json; allowed: a folder saved by timm (save_for_hf)")
    try:
        return timm.create_model(f"local-dir:{path}", pretrained=True, **size).eval()
    except (RuntimeError, KeyError, OSError) as error:
        raise ValueError(
            f"--input {name} is not a timm model folder: " + " ".join(str(error).splitlines()[:2])
        ) from None


def _timm_name_source(name: str, random_weights: bool) -> str:
    if random_weights:
        return f"{name} (random weights: --random_weights)"
    from timm.models import get_pretrained_cfg

    return f"{name} (timm's pretrained weights, {get_pretrained_cfg(name).hf_hub_id or 'its registry URL'})"


def _create_timm_model(name: str, *, random_weights: bool, **kwargs):
    """The registry name `NAME[.TAG]` with the pretrained weights timm names for it (checked, and its Hub
    repository fetched, before the model is built), or random weights."""
    import timm

    _check_timm_name(name, "--input")
    if random_weights:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        fetch_timm_pretrained(name, flag="--input")
    except ValueError as error:
        raise ValueError(f"{error}; pass --random_weights to convert it untrained") from None
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (RuntimeError, OSError, ValueError) as error:  # a download timm makes itself, or weights that do not fit
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"--input {name!r}: timm cannot load its pretrained weights ({reason})") from None


def _create_timm_architecture(name: str, flag: str, **kwargs):
    import timm

    _check_timm_name(name, flag)
    return timm.create_model(name, pretrained=False, **kwargs)


def _check_timm_name(name: str, flag: str) -> None:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name.partition(".")[0], timm.list_models(), n=3)
        raise ValueError(
            f"{flag} {name!r} is not a timm model name"
            + (", a file, a folder nor a Hub id" if flag == "--input" else "")
            + (f"; close names: {', '.join(close)}" if close else " (e.g. vit_base_patch16_224)")
        )


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


def _transformers_source(path: str, *, drop_pooler: bool, hub: dict, **options) -> Source:
    """A Transformers ViT-family folder or Hub id, with the processor saved beside it; a timm repository
    (config.json with `architecture`, Transformers' `timm_wrapper`) is read as `--from timm` reads it."""
    located = locate_model(path, flag="--input", **hub)
    if "architecture" in _read_config(located.folder, path):
        source = _timm_source(located.folder, hub={"revision": None, "token": None}, **options)
        return dataclasses.replace(source, described=located.describe())
    source = load_transformers_folder(located.folder, name=path)
    model = from_transformers(source, drop_pooler=drop_pooler)
    return Source(
        model, partial(reference_output, source), _saved_preprocessing(located.folder, model), located.describe()
    )


def _read_config(folder: str, name: str) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"--input {name} has no config.json: not a saved model")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--input {name}: config.json is not JSON ({error})") from None


def _timm_source(
    path: str, *, timm_model: str | None, image_size: int | None, hub: dict, random_weights: bool, **_
) -> Source:
    """A timm model name, weights file, saved folder or Hub id, with timm's evaluation settings for it (its
    pretrained_cfg, timm's defaults where it has none)."""
    from timm.data import resolve_data_config

    source, described = _load_timm_source(path, timm_model, image_size, hub=hub, random_weights=random_weights)
    model = from_timm(source)
    data_config = resolve_data_config({}, model=source)
    preprocessing = Preprocessing(
        image_size=model.config.image_size,
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode") or "center",
        interpolation=data_config["interpolation"],
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
    )
    if preprocessing.crop_mode not in CROP_MODES:
        raise ValueError(
            f"the timm model's pretrained_cfg has crop_mode={preprocessing.crop_mode!r}; allowed: "
            + ", ".join(CROP_MODES)
        )
    return Source(model, source, preprocessing, described)


def _vit_reduced_source(path: str, *, hub: dict, **_) -> Source:
    """A baseline saved by this package (a trained run), a folder or Hub id, with the processor saved beside it."""
    located = locate_model(path, flag="--input", **hub)
    try:
        model = ViTReducedForImageClassification.from_pretrained(located.folder).eval()
    except OSError as error:
        raise ValueError(
            f"--input {path} is not a saved ViTReduced model folder: {str(error).splitlines()[0]}"
        ) from None
    if model.config.reduction_strategy != "baseline":
        raise ValueError(
            f"--input {path} holds a {model.config.reduction_strategy!r} model; allowed: a 'baseline' "
            "(a post-hoc reduction starts from full MLPs)"
        )
    preprocessing = _saved_preprocessing(located.folder, model)
    return Source(model, lambda pixels: model(pixels).logits, preprocessing, located.describe())


# Where each --from value's models come from: each loader takes the --input path and the options of every source,
# using its own.
SOURCES = {"transformers": _transformers_source, "timm": _timm_source, "vit_reduced": _vit_reduced_source}


def _calibration_for(model, preprocessing: Preprocessing, *, prune_method: str, **data):
    """Calibration images transformed as the converted model's processor transforms them; `data` is the rest of
    `load_calibration`'s parameters."""
    calibration = load_calibration(preprocessing=preprocessing, **data)
    if prune_method == "taylor" and int(calibration.labels.max()) >= model.config.num_labels:
        raise ValueError(
            f"--prune_method taylor needs the model's labels: the calibration data ({calibration.source}) has "
            f"label {int(calibration.labels.max())}, the model {model.config.num_labels} classes"
        )
    return calibration


SHALLOW_KEYS = ("reduction_mlp_ratio", "prune_method")
GROUPED_KEYS = ("share_method", "mlp_share_group_size")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("transformers", "timm", "vit_reduced"),
        help="library of the input model (vit_reduced: a baseline saved by this package, e.g. a trained run)",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a local model folder (it wins) or a Hub id (org/name); timm also: a registry name NAME[.TAG] (its "
        "pretrained weights), hf-hub:org/name, or a .safetensors/.pth state dict (with --timm_model)",
    )
    parser.add_argument("--revision", help="a Hub id's branch, tag or commit (default: main)")
    parser.add_argument(
        "--hub_token", help="a token to read a private or gated Hub id (default: HF_TOKEN or the login)"
    )
    parser.add_argument(
        "--random_weights",
        action="store_true",
        help="timm: build a registry name with random weights instead of downloading its pretrained ones",
    )
    parser.add_argument("--output_dir", required=True, type=Path, help="folder to write")
    parser.add_argument("--timm_model", help="timm architecture of a state dict given as --input")
    parser.add_argument(
        "--image_size",
        type=int,
        help="timm: build the architecture at this image size (default: its name's, e.g. 224), for weights "
        "trained at another size",
    )
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
        help="shallow: first units (the paper), largest ||fc1 row||*||fc2 column|| (magnitude), largest mean "
        "|activation| (activation) or |activation x gradient| of the loss (taylor) on calibration images",
    )
    parser.add_argument(
        "--share_method",
        default="leader",
        choices=SHARE_METHODS,
        help="grouped: the group's first MLP (the paper), the mean of its MLPs, or their mean after matching each "
        "member's hidden units to the leader's on calibration images (aligned)",
    )
    parser.add_argument("--mlp_share_group_size", type=int, help="grouped: blocks per MLP (default 2)")
    parser.add_argument(
        "--drop_pooler",
        action="store_true",
        help="transformers: convert a ViTModel without its pooler",
    )
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a non-empty --output_dir")
    calibration = parser.add_argument_group("calibration (activation, taylor, aligned)")
    calibration.add_argument(
        "--calibration_samples",
        type=int,
        default=DEFAULT_CALIBRATION_SAMPLES,
        help="training images to calibrate on (default %(default)s)",
    )
    calibration.add_argument("--seed", type=int, default=0, help="which images are drawn (default %(default)s)")
    calibration.add_argument("--dataset_name", help="as the training script's; neither gives the embedded digits")
    calibration.add_argument("--dataset_config_name")
    calibration.add_argument("--train_dir", help="image folders in ImageNet's layout, as the training script's")
    calibration.add_argument("--train_split", default="train")
    calibration.add_argument("--image_column")
    calibration.add_argument("--label_column")
    calibration.add_argument("--cache_dir")
    return parser


def check_arguments(args) -> dict | None:
    """The reduction the flags ask for (None: convert only), or a ValueError naming the flag."""
    check_output_folder(args.output_dir, args.overwrite_output_dir)
    reduction = None
    if args.strategy != "baseline":
        reduction = {
            "strategy": args.strategy,
            "reduction_mlp_ratio": args.reduction_mlp_ratio,
            "prune_method": args.prune_method,
            "share_method": args.share_method,
            "mlp_share_group_size": args.mlp_share_group_size,
        }
        check_reduce_arguments(**reduction)
    else:
        for flag in ("reduction_mlp_ratio", "mlp_share_group_size"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} needs --strategy shallow or grouped")
    if args.source != "timm" and args.timm_model:
        raise ValueError("--timm_model applies to --from timm only")
    if args.image_size is not None:
        if args.source != "timm":
            raise ValueError("--image_size applies to --from timm only (a Transformers folder records its size)")
        if args.image_size < 1:
            raise ValueError(f"--image_size {args.image_size} is not valid; allowed: an integer >= 1")
    if args.source != "timm" and args.random_weights:
        raise ValueError("--random_weights applies to --from timm with a model name only")
    if args.source != "transformers" and args.drop_pooler:
        raise ValueError("--drop_pooler applies to --from transformers only")
    if args.calibration_samples < 1:
        raise ValueError(f"--calibration_samples {args.calibration_samples} is not valid; allowed: an integer >= 1")
    return reduction


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        reduction = check_arguments(args)
        source = SOURCES[args.source](
            args.input,
            drop_pooler=args.drop_pooler,
            timm_model=args.timm_model,
            image_size=args.image_size,
            random_weights=args.random_weights,
            hub={"revision": args.revision, "token": args.hub_token},
        )
        model = source.model
        difference = max_logit_difference(source.logits, lambda pixels: model(pixels).logits, model)
        calibration = None
        if reduction is not None and needs_calibration(args.prune_method, args.share_method):
            calibration = _calibration_for(
                model,
                source.preprocessing,
                prune_method=args.prune_method,
                samples=args.calibration_samples,
                seed=args.seed,
                dataset_name=args.dataset_name,
                dataset_config_name=args.dataset_config_name,
                train_dir=args.train_dir,
                train_split=args.train_split,
                image_column=args.image_column,
                label_column=args.label_column,
                cache_dir=args.cache_dir,
            )
        if reduction:
            model = reduce(model, **reduction, calibration=calibration)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        parser.error(str(error))

    conversion = {
        "source": f"{args.source} {source.described}" + (f" ({args.timm_model})" if args.timm_model else ""),
        **({"weights": "random (--random_weights): untrained"} if args.random_weights else {}),
        "method": _describe_reduction(reduction),
        "largest logit difference (converted baseline vs source, 2 random images)": f"{difference:.2e}",
    }
    provenance = {
        "source": conversion["source"],
        **({"weights": "random (--random_weights)"} if args.random_weights else {}),
        "strategy": model.config.reduction_strategy,
        # The method of the strategy only: a shallow cut has no sharing method, a grouped one no pruning method.
        **{
            key: value
            for key, value in (reduction or {}).items()
            if value is not None and key in {"shallow": SHALLOW_KEYS, "grouped": GROUPED_KEYS}[reduction["strategy"]]
        },
        "preprocessing": source.preprocessing.as_dict(),
    }
    if calibration is not None:
        provenance["calibration"] = {"samples": len(calibration.labels), "seed": args.seed, "data": calibration.source}
        conversion["calibration"] = (
            f"{len(calibration.labels)} training images of {calibration.source} (seed {args.seed})"
        )

    def write(folder: Path):
        model.save_pretrained(folder)
        source.preprocessing.image_processor().save_pretrained(folder)
        write_provenance(folder, provenance)
        write_model_card(folder, conversion=conversion, final_folder=args.output_dir)

    write_folder(args.output_dir, write)
    print(
        f"Wrote {args.output_dir}: {model.config.reduction_strategy}, {model.num_parameters():,} parameters"
        + (", RANDOM weights (--random_weights: untrained, it has learned nothing)" if args.random_weights else "")
        + f". The converted baseline's logits differ from the source's by at most {difference:.2e} "
        "on 2 random images."
    )


def _describe_reduction(reduction: dict | None) -> str:
    if reduction is None:
        return "converted as is (baseline)"
    return ", ".join(f"{key}={value}" for key, value in reduction.items() if value is not None)
