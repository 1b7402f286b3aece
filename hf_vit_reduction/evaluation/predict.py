"""`hf-vit-reduction predict`: the top-k labels and scores of each image of a folder or a list of files (timm's
inference.py), through the model's own preprocessing.

    hf-vit-reduction predict runs/baseline photos/ --output_file predictions.jsonl --top_k 3
    hf-vit-reduction predict timm:deit_tiny_patch16_224 a.jpg b.png --output_file predictions.csv

The model is named as for `evaluate`. JSONL: one line per image, {"file", "labels", "scores"}, best first; CSV: file,
label_1, score_1, ..., label_k, score_k. Scores are softmax probabilities. Unreadable files are skipped, then named
and counted at the end.
"""

import csv
import json
import logging
import os

import datasets
import torch
import transformers
from accelerate import Accelerator
from PIL import Image
from tqdm.auto import tqdm

from ..cli import command_parser
from ..training import loaders
from ..training.data import IMAGE_EXTENSIONS
from .evaluate import ChannelsLast, add_scoring_arguments
from .loading import ScoringCollate
from .sources import load_classifier

logger = logging.getLogger(__name__)
OUTPUT_FORMATS = (".jsonl", ".csv")


def parse_args(argv: list[str] | None = None):
    parser = command_parser("predict", description=__doc__)
    parser.add_argument("model", help="a run or model folder, a Hub id, timm:NAME")
    parser.add_argument("inputs", nargs="+", help="image files, or folders searched for images")
    parser.add_argument("--output_file", required=True, help=".jsonl or .csv")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--workers", "-j", type=int, default=0)
    add_scoring_arguments(parser)
    args = parser.parse_args(argv)
    if os.path.splitext(args.output_file)[1].lower() not in OUTPUT_FORMATS:
        parser.error(f"--output_file={args.output_file!r} must end in {' or '.join(OUTPUT_FORMATS)}")
    folder = os.path.dirname(os.path.abspath(args.output_file))
    if not os.path.isdir(folder):
        parser.error(f"--output_file={args.output_file!r}: the folder {folder!r} does not exist")
    if args.top_k < 1:
        parser.error(f"--top_k={args.top_k} must be at least 1")
    return args


def find_images(inputs: list[str]) -> list[str]:
    """The files named, and the image files under the folders named (sorted); ValueError for a missing path."""
    files = []
    for name in inputs:
        if os.path.isdir(name):
            found = sorted(
                os.path.join(root, file)
                for root, _, names in os.walk(name)
                for file in names
                if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise ValueError(f"input folder {name!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
        elif os.path.isfile(name):
            files.append(name)
        else:
            raise ValueError(f"input {name!r} does not exist")
    return list(dict.fromkeys(files))


def check_one_readable(files: list[str]) -> None:
    """Raise when not one of the files is an image PIL can read; stops at the first that is."""
    for file in files:
        try:
            loaders.decode_image(file)
            return
        except loaders.UNREADABLE_IMAGE_ERRORS:
            continue
    raise ValueError(f"none of the {len(files)} input files is an image PIL can read (e.g. {files[0]!r})")


def main(argv: list[str] | None = None) -> list[dict]:
    """The predictions, one dict per readable image in input order."""
    args = parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line for every request to the Hub
    transformers.utils.logging.disable_progress_bar()  # one bar per model scored, not one per weights file read
    try:
        files = find_images(args.inputs)
        check_one_readable(files)
        classifier = load_classifier(
            args.model, device=accelerator.device, revision=args.revision, token=args.hub_token
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if classifier.label_names is None:
        names = [str(i) for i in range(classifier.num_classes)]
        logger.warning("%s names no labels: its class indices are written instead", args.model)
    else:
        names = classifier.label_names
    top_k = min(args.top_k, classifier.num_classes)
    probe = classifier.transform(Image.new("RGB", (64, 64)))
    examples = datasets.Dataset.from_dict(
        {"image": files, "index": list(range(len(files)))},
        features=datasets.Features({"image": datasets.Image(decode=False), "index": datasets.Value("int64")}),
    )
    transform = loaders.ExampleTransform(
        classifier.transform, image_column="image", label_column="index", placeholder_size=probe.shape[-1]
    )
    loader = torch.utils.data.DataLoader(
        loaders.prepare_dataset(examples, transform),
        batch_size=args.eval_batch_size,
        num_workers=args.workers,
        collate_fn=ScoringCollate(label_map=None, placeholder=torch.zeros_like(probe)),
    )
    model, normalize = classifier.model, classifier.normalize
    if args.channels_last:
        model, normalize = model.to(memory_format=torch.channels_last), ChannelsLast(normalize)
    if args.torch_compile:
        model = torch.compile(model)
    predictions, unreadable = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc="predict"):
            unreadable += batch["bad_images"]
            with accelerator.autocast():
                logits = model(pixel_values=normalize(batch["pixel_values"].to(accelerator.device))).logits
            scores, classes = logits.float().softmax(-1).topk(top_k, dim=-1)
            for index, row_scores, row_classes in zip(batch["labels"].tolist(), scores.tolist(), classes.tolist()):
                if index >= 0:
                    labels = [names[c] for c in row_classes]
                    predictions.append({"file": files[index], "labels": labels, "scores": row_scores})
    write_predictions(predictions, args.output_file, top_k=top_k)
    print(f"wrote {len(predictions)} predictions (top {top_k}) to {args.output_file}")
    if unreadable:
        shown = ", ".join(unreadable[:10]) + (f" and {len(unreadable) - 10} more" if len(unreadable) > 10 else "")
        print(f"skipped {len(unreadable)} unreadable file(s): {shown}")
    return predictions


def write_predictions(predictions: list[dict], path: str, *, top_k: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as file:
        if path.lower().endswith(".jsonl"):
            file.writelines(json.dumps(row) + "\n" for row in predictions)
            return
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["file", *(f"{kind}_{i}" for i in range(1, top_k + 1) for kind in ("label", "score"))])
        for row in predictions:
            writer.writerow([row["file"], *(v for pair in zip(row["labels"], row["scores"]) for v in pair)])
