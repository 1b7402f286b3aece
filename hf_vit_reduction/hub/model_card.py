"""Model cards (README.md) for ViTReduced model folders, in the Hub's metadata format.

    hf-vit-reduction card FOLDER [--output_file PATH] [--hub_model_id ID] [--run_dir DIR]
    hf-vit-reduction card ORG/NAME --output_file PATH [--revision REV] [--hub_token TOKEN]

A local folder wins; any other name is a Hub id, whose JSON files, history.jsonl and training_curves.png (no
weights) are downloaded into the Hub cache at --revision, read with --hub_token or HF_TOKEN (HF_HUB_OFFLINE=1: from
the cache alone). A folder's card goes to FOLDER/README.md by default; a Hub id's needs --output_file, since the
cache is never written to and README.md in the current folder may be a file of yours. Its snippets load the id.

`write_model_card(folder)` renders `templates/model_card.md` through `huggingface_hub`'s `ModelCard`,
`ModelCardData` and `EvalResult` from what the folder holds: the config (strategy and cost), the saved image
processor (preprocessing), and, for a training run, `args.json` (the recipe's values and their sources),
`results.json`, `history.jsonl` and `training_curves.png`; for a converted model, the `conversion` facts its
converter passes. The card states the recipe once, grouped; how the run was driven on its machine (workers,
checkpointing, trackers, Hub pushes, benchmarks) stays in `args.json`, which travels with the model.
"""

import argparse
import math
import os
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image

from ..cli import command_parser
from ..configuration_vit_reduced import ViTReducedConfig
from ..image_processing_vit_reduced import PREPROCESSING_FIELDS
from ..summary import summarize
from .locating import locate_model
from .provenance import read_provenance
from .run_folder import read_history, read_json

TEMPLATE = "model_card.md"
# What a card reads from a model's Hub repository: config, processor, args, results and provenance (all JSON), the
# history and the curves; never the weights.
CARD_FILES = ("*.json", "history.jsonl", "training_curves.png")
STRATEGY_DESCRIPTIONS = {
    "baseline": "Every block has its own MLP of the full width: the paper's ViT baseline.",
    "grouped": "Groups of adjacent blocks share one MLP (blocks 2i and 2i+1 for a group size of 2), which removes "
    "parameters and keeps the compute; the shared MLP's initial weights are scaled by the configured ratio.",
    "shallow": "Every block keeps its own MLP but only the first part of its hidden units (half in the paper): "
    "fewer parameters and less compute.",
    "thin": "Every block's MLP is built narrow from the start (MLP ratio 2 in the paper's ViT-B/16).",
}
TAGS = ["vision", "vit", "image-classification", "parameter-reduction"]
PAPER = (
    "[Parameter Reduction Improves Vision Transformers: A Comparative Study of Sharing and Width Reduction]"
    "(https://arxiv.org/abs/2512.01059)"
)

# The training hyperparameters on the card, grouped as a reader thinks of them. Recipe fields (args.json's
# `recipe`: value and source) and a few flags outside the recipe that change what is learned (shown when set).
# Every recipe field is in one group or in RUN_PLUMBING; every other flag stays in args.json only.
HYPERPARAMETER_GROUPS = {
    "optimization": ("lr", "weight_decay"),
    "schedule": ("epochs", "max_train_steps", "warmup_epochs", "warmup_lr", "min_lr", "sched_on_updates"),
    "augmentation": (
        "scale",
        "hflip",
        "color_jitter",
        "aa",
        "train_interpolation",
        "mixup",
        "cutmix",
        "reprob",
        "random_erasing_stage",
        "aug_repeats",
    ),
    "regularization": ("drop_path", "smoothing"),
    "EMA": ("model_ema", "model_ema_decay", "model_ema_warmup", "ema_shared_decay_per_use"),
    "precision": ("mixed_precision", "amp", "amp_dtype", "tf32", "cudnn_benchmark", "channels_last"),
    "data and batch": (
        "model_size",
        "batch_size",
        "grad_accum_steps",
        "max_train_samples",
        "max_eval_samples",
        "interpolation",
        "crop_pct",
        "mean",
        "std",
        "seed",
    ),
}
# Recipe fields that set how the run used its machine, not what it learned.
RUN_PLUMBING = ("workers",)


def render_model_card(
    folder: str | Path,
    *,
    repo_id: str | None = None,
    run_dir: str | Path | None = None,
    conversion: dict | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    final_folder: str | Path | None = None,
) -> ModelCard:
    """The card of the model in `folder`.

    `run_dir` holds the run's outputs (args.json, results.json, history.jsonl, training_curves.png); it defaults to
    `folder`, where the training script saves its final model. `conversion` is what a converter reports, e.g.
    `{"source": "timm vit_base_patch16_224", "method": "shallow, prune_method=first", "largest logit difference":
    "3e-6"}`, rendered as given. The usage snippets load `repo_id` when the model is pushed, else the folder:
    `final_folder` where the card is written in a staging folder that is then moved there, else `folder`.
    """
    folder = Path(folder)
    run_dir = Path(run_dir) if run_dir is not None else folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a saved model folder")
    config = ViTReducedConfig.from_pretrained(folder)
    cost = summarize(config)
    strategy = config.reduction_strategy or "baseline"
    run_args = read_json(run_dir / "args.json") or {}
    results = read_json(run_dir / "results.json")
    history = read_history(run_dir / "history.jsonl")
    location = str(final_folder if final_folder is not None else folder)
    model_name = repo_id.split("/")[-1] if repo_id else Path(location).resolve().name
    dataset_id, dataset_description = _dataset(run_args, results)
    split = run_args.get("validation_split", "validation")

    eval_results = None
    if results and "final_top1" in results:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_id,
                dataset_name=dataset_description,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=round(results[key], 2),
            )
            for key, metric_type, metric_name in (
                ("final_top1", "accuracy", "Top-1 accuracy (%)"),
                ("final_top5", "top_5_accuracy", "Top-5 accuracy (%)"),
            )
        ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        tags=[*TAGS, strategy, "custom_code"],
        datasets=[dataset_id] if _is_hub_id(run_args.get("dataset_name")) else None,
        metrics=["accuracy"],
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results,
    )
    limitations = []
    if results is not None and str(results.get("data", "")).startswith("digits"):
        limitations.append(
            "A digits model is a demo, not an ImageNet model: it was trained on scikit-learn's 1,437 handwritten "
            "8×8 digits, upscaled, and tells nothing about the paper's ImageNet results."
        )
    if results is not None:
        limitations.append(
            "The results are one run with one seed; the paper compares strategies over full 300-epoch ImageNet-1k runs."
        )
    if conversion is not None and strategy != "baseline":
        limitations.append(
            "A converted and reduced model has not been trained after the reduction: expect lower accuracy than "
            "its source until it is fine-tuned."
        )
    limitations.append(
        "The modeling code is this repository's own (`trust_remote_code=True`), or the `hf-vit-reduction` package."
    )
    card = ModelCard.from_template(
        card_data,
        template_str=resources.files(__package__).joinpath("templates", TEMPLATE).read_text(encoding="utf-8"),
        model_name=model_name,
        location=repo_id or location,
        strategy=strategy,
        strategy_description=STRATEGY_DESCRIPTIONS[strategy],
        strategy_parameter=_strategy_parameter(config),
        architecture=_architecture(config),
        paper=PAPER,
        cost=cost,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_labels=config.num_labels,
        dataset_description=dataset_description if run_args or results else None,
        preprocessing=_preprocessing(folder),
        preprocessing_sources=_preprocessing_sources(run_args),
        results=results if eval_results else None,
        final_row=history[-1] if history else None,
        split=split,
        curves=(folder / "training_curves.png").is_file(),
        hyperparameters=_hyperparameters(run_args),
        **_provenance(conversion, read_provenance(folder)),
        limitations=limitations,
    )
    return card


def how_it_was_made(provenance: dict) -> list[str]:
    """The lines of the card's section from a folder's provenance.json: the cut (a converter's record) and, for a
    training run that started from a saved model, its recovery (teacher, distillation, epochs, top-1 before and
    after) and what its labels needed (a new classifier, reordered rows)."""
    cut = provenance.get("cut", provenance) if "recovered_from" in provenance else provenance
    lines = []
    if cut and cut.get("strategy") == "baseline":
        lines.append(f"- Converted from `{cut.get('source')}`, as it is.")
    elif cut:
        method = cut.get("prune_method") if cut.get("strategy") == "shallow" else cut.get("share_method")
        line = f"- Cut from `{cut.get('source')}` to `{cut.get('strategy')}` with `{method}`"
        calibration = cut.get("calibration")
        if calibration:
            line += f", calibrated on {calibration['samples']} training images of {calibration['data']}"
            line += f" (seed {calibration['seed']})"
        lines.append(line + ".")
    if "recovered_from" in provenance:
        distillation = provenance.get("distillation")
        how = "without distillation"
        if distillation:
            how = f"with {distillation['distillation']} distillation from `{distillation['teacher']}` (alpha "
            how += f"{distillation['distillation_alpha']}"
            if "distillation_temperature" in distillation:
                how += f", temperature {distillation['distillation_temperature']}"
            how += ")"
            if distillation.get("distillation_head"):
                how += " into the distillation head, the labels into the class head (DeiT's recipe)"
        lines.append(
            f"- Recovered from `{provenance['recovered_from']}` for {provenance['recovery_epochs']} epochs {how}: "
            f"top-1 {provenance['top1_before']:.2f}% before, {provenance['top1_after']:.2f}% after."
        )
        labels = provenance.get("labels") or {}
        theirs = ", ".join(map(str, labels.get("model_labels", [])[:10]))
        if labels.get("labels") == "new head":
            lines.append(
                f"- A new classifier for the data's labels (`--ignore_mismatched_sizes`): the starting model "
                f"predicted {theirs}{', ...' if len(labels['model_labels']) > 10 else ''}."
            )
        elif labels.get("labels") == "permuted":
            lines.append("- The starting model's classifier rows were reordered to the data's label order.")
        elif labels.get("labels") == "by index":
            lines.append(
                f"- The starting model named no labels ({theirs}{', ...' if len(labels['model_labels']) > 10 else ''}"
                "): its classes were taken as the data's labels by index."
            )
    return lines


def write_model_card(folder: str | Path, *, output_file: str | Path | None = None, **kwargs) -> Path:
    """Render the card of the model in `folder` (see `render_model_card`) and save it as `output_file`, by default
    `folder/README.md`."""
    path = Path(output_file) if output_file is not None else Path(folder) / "README.md"
    render_model_card(folder, **kwargs).save(path)
    return path


def _architecture(config: ViTReducedConfig) -> str:
    """The ViT family's options the model has, in words ("a plain ViT" without any)."""
    pooling = {"token": "the class token", "avg": "the mean patch token", "map": "attention pooling (MAP)"}
    parts = [
        "a distillation token and head: predictions average the class and distillation heads (DeiT)"
        if config.distillation_token
        else "",
        "" if config.class_token else "no class token",
        f"{config.num_register_tokens} register tokens" if config.num_register_tokens else "",
        "position embeddings on the patches only" if config.no_embed_class else "",
        "LayerScale" if config.layer_scale_init_value is not None else "",
        "a LayerNorm before the blocks" if config.pre_norm else "",
        f"classifies {pooling[config.pooling]}" if config.pooling != "token" else "",
        "the final norm on the pooled features (fc_norm)" if config.fc_norm else "",
        f"{config.hidden_act} MLPs" if config.hidden_act != "gelu" else "",
    ]
    return "; ".join(part for part in parts if part) or "a plain ViT (class token, GELU MLPs)"


def _strategy_parameter(config: ViTReducedConfig) -> str:
    """The strategy with the parameter that sizes it, in words."""
    strategy, ratio = config.reduction_strategy or "baseline", config.reduction_mlp_ratio
    if strategy == "grouped":
        return (
            f"grouped: {config.mlp_share_group_size} blocks per MLP, the shared MLP's initial weights "
            f"scaled by {ratio:.3g}"
        )
    if strategy == "shallow":
        return f"shallow: {ratio:g} of each MLP's hidden units kept"
    if strategy == "thin":
        return f"thin: MLP ratio {ratio:g}"
    return "baseline: every block has its own full-width MLP"


def _preprocessing(folder: Path) -> list[tuple[str, str]] | None:
    """What the saved image processor does, step by step, in numbers; None without one."""
    processor = read_json(folder / "preprocessor_config.json")
    return None if processor is None else preprocessing_steps(processor)


def preprocessing_steps(processor: dict) -> list[tuple[str, str]]:
    """What an image processor (its saved dict) does, step by step, in numbers."""
    steps = []
    if processor.get("do_convert_rgb"):
        steps.append(("convert", "to RGB"))
    if processor.get("do_resize", True):
        size, resample = processor["size"], Image.Resampling(processor.get("resample", Image.Resampling.BILINEAR))
        target = (
            f"shorter side to {size['shortest_edge']} px, aspect ratio kept"
            if "shortest_edge" in size
            else f"{size['width']} × {size['height']} px (width × height), aspect ratio not kept"
        )
        steps.append(("resize", f"{target}; {resample.name.lower()} interpolation"))
    if processor.get("do_center_crop"):
        crop = processor["crop_size"]
        steps.append(("centre crop", f"{crop['width']} × {crop['height']} px"))
    if processor.get("do_rescale", True):
        factor = processor.get("rescale_factor", 1 / 255)
        steps.append(("rescale", "÷ 255 (to 0..1)" if math.isclose(factor, 1 / 255) else f"× {factor:g}"))
    if processor.get("do_normalize", True):
        steps.append(
            ("normalize", f"mean {_numbers(processor['image_mean'])}, std {_numbers(processor['image_std'])}")
        )
    return steps


def _preprocessing_sources(run_args: dict) -> str | None:
    """Where a training run's preprocessing values came from, as args.json records them ("starting model", a
    recipe, the command line); None for a folder no run wrote."""
    recipe = run_args.get("recipe") or {}
    sources = {}
    for field in PREPROCESSING_FIELDS:
        if field in recipe:
            sources.setdefault(recipe[field]["source"], []).append(field)
    if not sources:
        return None
    start = run_args.get("model_name_or_path")
    return "; ".join(
        f"{', '.join(fields)} from "
        + (f"the starting model `{start}`'s processor" if source == "starting model" else _source_phrase(source))
        for source, fields in sources.items()
    )


def _source_phrase(source: str) -> str:
    """ "finetune recipe" -> "the finetune recipe"; a source that names its owner ("timm's ...") stays as it is."""
    return source if "'s " in source else f"the {source}"


def _numbers(values) -> str:
    return "(" + ", ".join(f"{value:g}" for value in values) + ")"


def _hyperparameters(run_args: dict) -> list[dict] | None:
    """The card's hyperparameter rows: group, name, value and source, grouped; None for a folder without a run.

    A recipe field's source is what args.json's `recipe` records ("paper recipe", "digits recipe", "command line");
    the other flags are shown under their own name. The effective global batch closes the "data and batch" group.
    """
    if not run_args:
        return None
    recipe = run_args.get("recipe") or {}
    rows = []
    for group, names in HYPERPARAMETER_GROUPS.items():
        for name in names:
            if name in recipe:
                value, source = recipe[name]["value"], recipe[name]["source"]
            elif run_args.get(name) is not None:
                value, source = run_args[name], f"`--{name}`"
            else:
                continue
            rows.append({"group": group, "name": f"`{name}`", "value": _value(value), "source": source})
        if group == "data and batch" and {"batch_size", "grad_accum_steps"} <= run_args.keys():
            per_device, accumulation = run_args["batch_size"], run_args["grad_accum_steps"]
            processes = run_args.get("num_processes", 1)
            rows.append(
                {
                    "group": group,
                    "name": "global batch (per device × accumulation × processes)",
                    "value": f"{per_device * accumulation * processes:,} = {per_device} × {accumulation} × {processes}",
                    "source": "computed",
                }
            )
    for previous, row in zip([None, *rows], rows):
        row["first"] = previous is None or previous["group"] != row["group"]
    return rows


def _value(value) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return "none" if value is None else str(value)


def _provenance(conversion: dict | None, provenance: dict | None) -> dict:
    """The template's provenance area: how a model that was not trained from scratch here was made: the
    converter's facts, and the cut and recovery recorded in the folder's provenance.json."""
    return {"conversion": conversion, "how_it_was_made": how_it_was_made(provenance) if provenance else None}


def _is_hub_id(name: str | None) -> bool:
    if not name or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _dataset(run_args: dict, results: dict | None) -> tuple[str, str]:
    """(the Hub dataset id or a type name, a description) of the data a run evaluated on."""
    name = run_args.get("dataset_name")
    if name:
        return (name, name) if _is_hub_id(name) else ("custom", Path(name).name)
    folder = run_args.get("validation_dir") or run_args.get("train_dir")
    if folder:
        return "imagefolder", f"the image folder {Path(folder).name}"
    data = str((results or {}).get("data", ""))
    if data.startswith("digits"):
        return "digits", "scikit-learn's handwritten digits"
    return "custom", data or "unrecorded data"


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder, or its Hub id")
    parser.add_argument(
        "--output_file",
        default=None,
        help="where to write the card (default: MODEL/README.md for a folder; required for a Hub id)",
    )
    parser.add_argument(
        "--hub_model_id", default=None, help="the Hub repository the card's snippets load (default: MODEL's Hub id)"
    )
    parser.add_argument("--run_dir", default=None, help="where args.json and results.json are (default: MODEL)")
    parser.add_argument("--revision", help="a Hub id's branch, tag or commit (default: main)")
    parser.add_argument(
        "--hub_token", help="a token to read a private or gated Hub id (default: HF_TOKEN or the login)"
    )
    args = parser.parse_args(argv)
    if args.output_file is None and not os.path.isdir(args.model) and _is_hub_id(args.model):
        parser.error(
            f"model {args.model!r} is not a local folder, so it is a Hub id, and a Hub id's card needs --output_file "
            "PATH (the downloaded repository in the Hub cache is never written to)"
        )
    if args.output_file is not None:
        folder = os.path.dirname(os.path.abspath(args.output_file))
        if os.path.isdir(args.output_file) or not os.path.isdir(folder):
            parser.error(f"--output_file {args.output_file!r} is not valid; allowed: a file in an existing folder")
    try:
        located = locate_model(
            args.model, revision=args.revision, token=args.hub_token, flag="model", files=CARD_FILES
        )
        path = write_model_card(
            located.folder,
            output_file=args.output_file,
            repo_id=args.hub_model_id or located.repo_id,
            run_dir=args.run_dir,
        )
    except (OSError, ValueError) as error:  # a Hub id that cannot be had, a folder without a model, a corrupt file
        parser.error(str(error))
    print(f"wrote {path}")
