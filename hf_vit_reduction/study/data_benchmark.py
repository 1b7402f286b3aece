"""Input-pipeline throughput: our 🤗 Datasets loader against timm's own, on one ImageNet-layout JPEG folder.

    python -m hf_vit_reduction.data_benchmark --folder /tmp/digits-jpeg --make --workers 1 2

`--make` writes the embedded digits upscaled to 256 px as JPEGs (`<folder>/<label>/<n>.jpg`). Both loaders apply
the same timm train transform (RandomResizedCrop 224, flip, RandAugment, RandomErasing) in DataLoader workers.
"""

import argparse
import json
import random
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import create_dataset, create_loader
from timm.data.loader import _worker_init as timm_worker_init
from torch.utils.data import DataLoader

from ..command_line import CommandParser
from ..training.arguments import parse_args
from ..training.data import load_digits, load_image_classification_data
from ..training.loaders import ExampleTransform, prepare_dataset, train_loader, train_sampler
from ..training.recipe import build_transforms

MEAN = STD = (0.5, 0.5, 0.5)


def make_jpeg_folder(folder, size: int = 256, limit: int | None = None) -> int:
    """Write the digits as `size`-px RGB JPEGs in ImageNet's layout; returns the number of images."""
    digits = load_digits()["train"]
    count = len(digits) if limit is None else min(limit, len(digits))
    for index in range(count):
        example = digits[index]
        image = example["image"].convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        target = Path(folder) / str(example["label"]) / f"{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)
    return count


def paper_recipe(folder) -> argparse.Namespace:
    """The flags run_image_classification.py ends up with for `--train_dir folder`: the paper's recipe."""
    return parse_args(["--train_dir", str(folder), "--report_to", "none"])


def our_loader(folder, workers: int, batch_size: int, image_size: int) -> DataLoader:
    """What run_image_classification.py builds for `--train_dir`."""
    data = load_image_classification_data(train_dir=str(folder), train_val_split=0.01)
    train_transform, _ = build_transforms(paper_recipe(folder), image_size=image_size, mean=MEAN, std=STD)
    columns = {"image_column": data.image_column, "label_column": data.label_column}
    dataset = prepare_dataset(data.train, ExampleTransform(train_transform, **columns))
    sampler = train_sampler(dataset, num_processes=1, process_index=0, aug_repeats=0, seed=0)
    return train_loader(dataset, batch_size=batch_size, sampler=sampler, workers=workers, pin_memory=False, seed=0)


def timm_loader(folder, workers: int, batch_size: int, image_size: int):
    """timm's `create_loader` on its folder dataset, with the same transform."""
    recipe = paper_recipe(folder)
    dataset = create_dataset("", root=str(folder), is_training=True)
    return create_loader(
        dataset,
        input_size=(3, image_size, image_size),
        batch_size=batch_size,
        is_training=True,
        scale=recipe.scale,
        hflip=recipe.hflip,
        auto_augment=recipe.aa,
        re_prob=recipe.reprob,
        re_mode="pixel",
        interpolation="bicubic",
        mean=MEAN,
        std=STD,
        num_workers=workers,
        use_prefetcher=False,
        persistent_workers=False,
        device="cpu",
    )


def images_per_second(loader, batches: int, warmup: int, seed: int) -> float:
    """Throughput after `warmup` batches (worker start-up excluded).

    Every RNG a worker or the main process draws from starts from `seed` (timm's worker seeding for both
    loaders), so both loaders apply the same random augmentations in the same order: RandAugment's operations
    differ several-fold in cost, and unequal draws would otherwise dominate the comparison.
    """
    if warmup + batches > len(loader):
        raise ValueError(
            f"batches={batches} + warmup={warmup} exceeds the {len(loader)} batches of one pass over the "
            "folder; ask for fewer or use a larger folder"
        )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loader.generator = torch.Generator().manual_seed(seed)
    loader.worker_init_fn = partial(seed_like_timm, loader.worker_init_fn)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        images += len(batch["pixel_values"] if isinstance(batch, dict) else batch[0])
    return images / (time.perf_counter() - start)


def seed_like_timm(worker_init_fn, worker_id: int) -> None:
    """The loader's own worker set-up, then timm's worker seeding (NumPy included), for equal augmentations."""
    if worker_init_fn is not None:
        worker_init_fn(worker_id)
    timm_worker_init(worker_id)


LOADERS = {"ours (🤗 Datasets imagefolder)": our_loader, "timm create_loader": timm_loader}


def run(
    folder,
    workers: list[int],
    batch_size: int,
    batches: int,
    warmup: int,
    image_size: int,
    rounds: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Median images/s of each loader over `rounds`, the loaders alternating so that drifts hit both alike."""
    rows = []
    for count in workers:
        speeds = {name: [] for name in LOADERS}
        for _ in range(rounds):
            for name, build in LOADERS.items():
                loader = build(folder, count, batch_size, image_size)
                speeds[name].append(images_per_second(loader, batches, warmup, seed))
        for name, values in speeds.items():
            speed = statistics.median(values)
            rows.append(
                {
                    "loader": name,
                    "workers": count,
                    "images_per_s": speed,
                    "images_per_s_per_worker": speed / max(count, 1),
                    "images_per_s_each_round": values,
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| loader | workers | images/s | images/s per worker |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['loader']} | {row['workers']} | {row['images_per_s']:.1f} | "
            f"{row['images_per_s_per_worker']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True, help="an ImageNet-layout folder of images")
    parser.add_argument("--make", action="store_true", help="first write the digits there as 256 px JPEGs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per loader")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    if args.make:
        make_jpeg_folder(args.folder)
    rows = run(args.folder, args.workers, args.batch_size, args.batches, args.warmup, args.image_size, args.rounds)
    print(format_table(rows))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
