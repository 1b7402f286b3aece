"""Model cards (README.md) for ViTReduced model folders, in the Hub's metadata format.

    python -m hf_vit_reduction.model_card FOLDER [--repo_id ID] [--run_dir DIR]

`write_model_card(folder)` renders `templates/model_card.md` through `huggingface_hub`'s `ModelCard`,
`ModelCardData` and `EvalResult` from what the folder holds: the config (strategy and cost), and, for a training
run, `args.json`, `results.json`, `history.jsonl` and `training_curves.png`; for a converted model, the
`conversion` facts its converter passes.
"""

import argparse
import json
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..command_line import CommandParser
from ..configuration_vit_reduced import ViTReducedConfig
from ..conversion.provenance import read_provenance
from ..summary import summarize

TEMPLATE = "model_card.md"
STRATEGY_DESCRIPTIONS = {
    "baseline": "Every block has its own MLP of the full width: the paper's ViT baseline.",
    "grouped": "Groups of adjacent blocks share one MLP (blocks 2i and 2i+1 for a group size of 2), which removes "
    "parameters and keeps the compute; the shared MLP's initial weights are scaled by the configured ratio.",
    "shallow": "Every block keeps its own MLP but only the first part of its hidden units (half in the paper): "
    "fewer parameters and less compute.",
    "thin": "Every block's MLP is built narrow from the start (MLP ratio 2 in the paper's ViT-B/16).",
}
# Where the run's files were on its machine: meaningless to a reader of the card.
LOCAL_PATHS = ("output_dir", "cache_dir", "resume_from_checkpoint")
TAGS = ["vision", "vit", "image-classification", "parameter-reduction"]


def render_model_card(
    folder: str | Path,
    *,
    repo_id: str | None = None,
    run_dir: str | Path | None = None,
    conversion: dict | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The card of the model in `folder`.

    `run_dir` holds the run's outputs (args.json, results.json, history.jsonl, training_curves.png); it defaults to
    `folder`, where the training script saves its final model. `conversion` is what a converter reports, e.g.
    `{"source": "timm vit_base_patch16_224", "method": "shallow, prune_method=first", "largest logit difference":
    "3e-6"}`, rendered as given. `repo_id` is what the usage snippets load (the folder's name without one).
    """
    folder = Path(folder)
    run_dir = Path(run_dir) if run_dir is not None else folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a saved model folder")
    config = ViTReducedConfig.from_pretrained(folder)
    cost = summarize(config)
    strategy = config.reduction_strategy or "baseline"
    run_args = _read_json(run_dir / "args.json") or {}
    results = _read_json(run_dir / "results.json")
    history = _read_history(run_dir / "history.jsonl")
    model_name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
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
        repo_id=repo_id or model_name,
        strategy=strategy,
        strategy_description=STRATEGY_DESCRIPTIONS[strategy],
        cost=cost,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_labels=config.num_labels,
        results=results if eval_results else None,
        final_row=history[-1] if history else None,
        dataset_description=dataset_description,
        split=split,
        curves=(folder / "training_curves.png").is_file(),
        hyperparameters={
            key: value
            for key, value in run_args.items()
            if value is not None and "token" not in key.lower() and key not in LOCAL_PATHS
        },
        conversion=conversion,
        limitations=limitations,
    )
    provenance = read_provenance(folder)
    if provenance:
        card.text += how_it_was_made(provenance)
    return card


def how_it_was_made(provenance: dict) -> str:
    """The card's section from a folder's provenance.json: the cut (a converter's record) and, for a training run
    that started from a saved model, its recovery (teacher, distillation, epochs, top-1 before and after)."""
    cut = provenance.get("cut", provenance) if "recovered_from" in provenance else provenance
    lines = ["", "## How it was made", ""]
    if cut:
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
        lines.append(
            f"- Recovered from `{provenance['recovered_from']}` for {provenance['recovery_epochs']} epochs {how}: "
            f"top-1 {provenance['top1_before']:.2f}% before, {provenance['top1_after']:.2f}% after."
        )
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | Path, **kwargs) -> Path:
    """Render the card of the model in `folder` (see `render_model_card`) and save it as `folder/README.md`."""
    path = Path(folder) / "README.md"
    render_model_card(folder, **kwargs).save(path)
    return path


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a saved model folder")
    parser.add_argument("--repo_id", default=None, help="the Hub repository the card's snippets load")
    parser.add_argument("--run_dir", default=None, help="where args.json and results.json are (default: FOLDER)")
    args = parser.parse_args(argv)
    try:
        path = write_model_card(args.folder, repo_id=args.repo_id, run_dir=args.run_dir)
    except OSError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
