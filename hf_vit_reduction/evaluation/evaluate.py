"""`hf-vit-reduction evaluate`: score one or more image classifiers side by side, each through its own preprocessing.

    hf-vit-reduction evaluate runs/baseline runs/grouped --results_file scores.json
    hf-vit-reduction evaluate converted/ timm:deit_tiny_patch16_224 --dataset_name imagenet-1k --mixed_precision bf16

A model is a run folder (its final model), best_model/, a converted or cut folder, a Hub id (downloaded into the Hub
cache; a local folder of the same name wins), timm:NAME or a folder saved by timm. Each gets top-1, top-5 and the mean cross-entropy on the same images, images/s
(end to end, decoding included, as timm's validate.py; the device, dtype and batch named), parameters, GMACs, and the
share of images on which its top-1 equals the first model's. The data flags are training's: the embedded digits'
validation split by default. Labels are matched by name (--ignore_label_names: by index). Under `accelerate launch`
every image is counted once.
"""

import argparse
import csv
import io
import json
import logging
import os
import time

import torch
import transformers
from accelerate import Accelerator
from PIL import Image
from tqdm.auto import tqdm

from ..cli import command_parser
from ..training.compile import compile_model
from ..training.data import add_data_arguments
from ..training.loaders import UnreadableImageError
from ..training.outputs import write_atomic
from .loading import label_map, load_split, scoring_loader
from .scoring import evaluate_model
from .sources import TABLE_2_KEYS, Classifier, compute_figures, load_classifier

logger = logging.getLogger(__name__)
RESULTS_FORMATS = (".json", ".csv")
# The columns of --results_file, in order.
COLUMNS = (
    "model",
    "kind",
    "top1",
    "top5",
    "loss",
    "agreement",
    "images",
    "bad_images",
    "images_per_s",
    "device",
    "dtype",
    "batch_size",
    "parameters",
    "gmacs",
    "gmacs_convention",
    *TABLE_2_KEYS,
    "label_match",
    "preprocessing",
    "data",
    "run_top1",
)
GMACS_CONVENTIONS = {
    "paper": "the paper's convention (hf_vit_reduction.summary)",
    "flop_counter": (
        "torch.utils.flop_counter's FLOPs / 2 in one forward pass: every matmul, convolution and attention product"
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="run or model folders, Hub ids, timm:NAME")
    add_scoring_arguments(parser)
    parser.add_argument("--results_file", "--results-file", default=None, help="rows per model: .json or .csv")
    parser.add_argument(
        "--ignore_label_names", action="store_true", help="score class i as the dataset's label i, whatever its name"
    )
    add_data_arguments(parser.add_argument_group("data (training's flags)"))
    parser.add_argument("--seed", type=int, default=42, help="training's: the held-out split of a source without one")
    args = parser.parse_args(argv)
    if args.streaming or args.max_train_samples:
        parser.error("--streaming and --max_train_samples are training's; evaluate reads the validation split")
    if args.results_file:
        try:
            check_results_file(args.results_file)
        except ValueError as error:
            parser.error(str(error))
    return args


def add_scoring_arguments(parser) -> None:
    """The flags evaluate and predict share: how the models run."""
    parser.add_argument("--eval_batch_size", "--batch_size", "-b", type=int, default=64)
    parser.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"), default="no", help="autocast dtype")
    parser.add_argument("--channels_last", "--channels-last", action="store_true")
    parser.add_argument("--torch_compile", "--torch-compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--revision", help="the branch, tag or commit of a model given as a Hub id (default: main)")
    parser.add_argument(
        "--hub_token", help="a token to read private or gated Hub ids (default: HF_TOKEN or the login)"
    )


def check_results_file(path: str) -> None:
    if os.path.splitext(path)[1].lower() not in RESULTS_FORMATS:
        raise ValueError(f"--results_file={path!r} must end in {' or '.join(RESULTS_FORMATS)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--results_file={path!r}: the folder {folder!r} does not exist")


def default_workers(accelerator: Accelerator) -> int:
    """Loader workers: the cores per process, at most 8."""
    return min(8, max(1, (os.cpu_count() or 1) // accelerator.num_processes))


def main(argv: list[str] | None = None) -> list[dict]:
    """The rows, each also with `predictions` and `labels`: every scored image's top-1 and label as the model's class
    indices, in the split's order."""
    args = parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line for every request to the Hub
    transformers.utils.logging.disable_progress_bar()  # one bar per model scored, not one per weights file read
    try:  # every bad model, label set or data source fails here, before any image is scored
        data = load_split(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_dir=args.train_dir,
            validation_dir=args.validation_dir,
            train_split=args.train_split,
            validation_split=args.validation_split,
            image_column=args.image_column,
            label_column=args.label_column,
            cache_dir=args.cache_dir,
            train_val_split=args.train_val_split,
            seed=args.seed,
            max_eval_samples=args.max_eval_samples,
        )
        classifiers = [
            load_classifier(name, device=accelerator.device, revision=args.revision, token=args.hub_token)
            for name in dict.fromkeys(args.models)
        ]
        label_maps = [label_map(c, data.label_names, by_index=args.ignore_label_names) for c in classifiers]
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        raise SystemExit(f"error: {error}") from None
    if accelerator.is_main_process:
        logger.info(
            "scoring %d model(s) on %s, %s validation images; labels matched %s",
            len(classifiers),
            data.source,
            f"{len(data.validation):,}",
            "by index (--ignore_label_names)" if args.ignore_label_names else "by name",
        )
    workers = default_workers(accelerator) if args.workers is None else args.workers
    rows = []
    for classifier, mapping in zip(classifiers, label_maps):
        try:
            scores = score(
                classifier,
                data,
                label_map=mapping,
                by_index=args.ignore_label_names,
                on_bad_image=args.on_bad_image,
                batch_size=args.eval_batch_size,
                workers=workers,
                pin_memory=args.pin_mem,
                channels_last=args.channels_last,
                torch_compile=args.torch_compile,
                mixed_precision=args.mixed_precision,
                split=args.validation_split,
                accelerator=accelerator,
            )
        except UnreadableImageError as error:  # --on_bad_image error
            raise SystemExit(f"error: {error.line()}") from None
        rows.append(scores)
    add_agreement(rows, classifiers, by_index=args.ignore_label_names)
    if accelerator.is_main_process:
        print(format_table(rows))
        if args.results_file:
            write_results(rows, args.results_file)
            print(f"wrote {args.results_file}")
    return rows


def score(
    classifier: Classifier,
    data,
    *,
    label_map: list[int],
    by_index: bool,
    on_bad_image: str,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    channels_last: bool,
    torch_compile: bool,
    mixed_precision: str,
    split: str,
    accelerator: Accelerator,
) -> dict:
    """One model's row, with each image's top-1 class (`predictions`) for the agreement."""
    probe = classifier.transform(Image.new("RGB", (64, 64)))
    placeholder = torch.zeros_like(probe)
    loader = scoring_loader(
        data,
        classifier,
        label_map=label_map,
        placeholder=placeholder,
        on_bad_image=on_bad_image,
        batch_size=batch_size,
        workers=workers,
        pin_memory=pin_memory,
    )
    loader = accelerator.prepare(loader)
    figures = compute_figures(classifier, tuple(probe.shape))
    model, normalize = classifier.model, classifier.normalize
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        normalize = ChannelsLast(normalize)
    if torch_compile:  # as `train --torch_compile` compiles
        model = compile_model(model)
    # A warm-up batch first (compilation, cuDNN's choice of kernels), as timm's validate.py: images/s is the steady
    # state's.
    warm_up = placeholder.expand(batch_size, *placeholder.shape).to(accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        model(pixel_values=normalize(warm_up))
    _synchronize(accelerator)
    started = time.perf_counter()
    progress = tqdm(loader, desc=classifier.name, disable=None if accelerator.is_main_process else True)
    scores = evaluate_model(model, progress, accelerator, normalize=normalize, keep_predictions=True)
    _synchronize(accelerator)
    seconds = time.perf_counter() - started
    return {
        "model": classifier.name,
        "kind": classifier.kind,
        **{key: scores[key] for key in ("top1", "top5", "loss", "bad_images", "predictions", "labels")},
        "images": scores["count"],
        "images_per_s": (scores["count"] + scores["bad_images"]) / seconds,
        "device": _device_name(accelerator),
        "dtype": {"no": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}[mixed_precision],
        "batch_size": batch_size * accelerator.num_processes,
        **figures,
        "label_match": "by index" if by_index else "by name",
        "preprocessing": classifier.preprocessing,
        "data": f"{data.source} [{split}]",
        "run_top1": _run_top1(classifier.name),
    }


class ChannelsLast:
    """A `normalize` whose batch comes out in channels-last memory order."""

    def __init__(self, normalize):
        self.normalize = normalize

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(images).contiguous(memory_format=torch.channels_last)


def _synchronize(accelerator: Accelerator) -> None:
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)
    accelerator.wait_for_everyone()


def _device_name(accelerator: Accelerator) -> str:
    count = f"{accelerator.num_processes} x " if accelerator.num_processes > 1 else ""
    if accelerator.device.type == "cuda":
        return count + torch.cuda.get_device_name(accelerator.device)
    return count + accelerator.device.type


def _run_top1(name: str) -> float | None:
    """A run folder's own final top-1 (results.json), shown beside the score for comparison."""
    path = os.path.join(name, "results.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file).get("final_top1")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, (int, float)) else None


def add_agreement(rows: list[dict], classifiers: list[Classifier], *, by_index: bool) -> None:
    """Each row's `agreement`: the percentage of images whose top-1 equals the first model's (by label name, or by
    index with --ignore_label_names)."""

    def predicted(row, classifier):
        return row["predictions"] if by_index else [classifier.label_names[i] for i in row["predictions"]]

    first = predicted(rows[0], classifiers[0])
    for row, classifier in zip(rows, classifiers):
        ours = predicted(row, classifier)
        row["agreement"] = 100 * sum(a == b for a, b in zip(first, ours)) / max(len(first), 1)


def format_table(rows: list[dict]) -> str:
    """The rows as a markdown table, and the lines that say how they were measured."""
    lines = [
        "| model | kind | top-1 | top-5 | loss | agreement | images/s | parameters | GMACs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['kind']} | {row['top1']:.2f} | {row['top5']:.2f} | {row['loss']:.4f} | "
            f"{row['agreement']:.2f} | {row['images_per_s']:,.0f} | {row['parameters']:,} | "
            f"{row['gmacs']:.4g}{'' if row['gmacs_convention'] == 'paper' else '*'} |"
        )
    first = rows[0]
    unreadable = f" ({first['bad_images']} unreadable, left out)" if first["bad_images"] else ""
    lines += [
        "",
        (
            f"{first['data']}: {first['images']:,} images{unreadable}; labels matched {first['label_match']}; top-1, "
            "top-5 and agreement (top-1 equal to the first model's) in %."
        ),
        (
            f"images/s: {first['device']}, {first['dtype']}, batch {first['batch_size']}, after one warm-up batch, "
            "decoding and preprocessing included."
        ),
        f"GMACs per image: {GMACS_CONVENTIONS['paper']}; * {GMACS_CONVENTIONS['flop_counter']}.",
    ]
    lines += [f"- {row['model']}: {row['preprocessing']}" for row in rows]
    lines += [
        f"- {row['model']}: its run's own final top-1 {row['run_top1']:.2f}"
        for row in rows
        if row["run_top1"] is not None
    ]
    return "\n".join(lines)


def write_results(rows: list[dict], path: str) -> None:
    """One row per model in the order given: a JSON list, or CSV with a header (timm's --results-file)."""
    rows = [{key: row.get(key) for key in COLUMNS} for row in rows]
    if path.lower().endswith(".json"):
        write_atomic(path, json.dumps(rows, indent=2, allow_nan=False) + "\n")
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())
