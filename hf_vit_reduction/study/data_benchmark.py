"""Input-pipeline throughput: our 🤗 Datasets loader against timm's own, on folders of real photos.

    hf-vit-reduction data-benchmark --photos /tmp/photos --workers 1 2 --output_json speed.json

`--photos DIR` writes (once) two folders of JPEGs (quality 90) made of random crops and scales of scikit-learn's two
sample photos, in ImageNet's layout (`<photo>/<n>.jpg`), and measures both: `DIR/imagenet-sized` (400 of 500 x 375,
batches of 32) and `DIR/camera-sized` (120 of 4032 x 3024, a phone's 12 megapixels, batches of 16). `--folder` adds
folders of your own (batches of `--batch_size`).

Both loaders run the paper's recipe (RandomResizedCrop 224 with random interpolation, flip, RandAugment
rand-m9-mstd0.5-inc1, Mixup/CutMix, random erasing) and deliver normalized float batches ready for the model:

* ours, as run_image_classification.py builds it: uint8 images from the workers (JPEGs decoded at a reduced scale
  where the crop allows), then `Normalize` and the batch augmentation (Mixup/CutMix, erasing) in the main process;
* timm's `create_loader` as its train.py runs it: uint8 images, Mixup/CutMix in the workers' collate
  (`FastCollateMixup`), then its prefetcher normalizing and erasing. Its prefetcher's CUDA stream needs a GPU;
  without one the same normalization and erasing run on the CPU, in the main process, as ours do.

The main process runs its batch work on one thread, as each worker does. The two loaders alternate, `--rounds`
times each, so that the load of the machine hits both alike; each round times every batch after `--warmup` of one
pass over the folder (worker start excluded).

Apart from that end-to-end figure, the workers' own: uint8 batches/s per worker, the loader's batches taken as the
workers deliver them, with no batch work after (on a GPU machine that work runs on the device). timm's workers do
the same job there: its `create_loader` with its default `fast_collate` (no Mixup in the collate), read below its
prefetcher. Ours is the engine's own loader (`engine.build_loaders`), so what is measured is what a run uses.

Also measured for ours: how long an epoch waits for its first batch with workers started for it (before this project
kept its workers) and with persistent workers; per folder, how far the reduced-scale decode's crops are from decoding
whole; and two decode paths for the crop on timm's boxes: PIL (what the loaders use) against torchvision's
`decode_jpeg` (libjpeg-turbo) with the crop and an antialiased resize on uint8 tensors, milliseconds per image and
how far the second is from the first.
"""

import argparse
import json
import random
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from PIL import Image
from timm.data import FastCollateMixup, create_dataset, create_loader

from ..cli import command_parser
from ..training import engine
from ..training.arguments import parse_args
from ..training.builders import Normalize, build_batch_augmentation, build_transforms
from ..training.config import RunConfig, batch_augmentation_kwargs, transform_kwargs
from ..training.loaders import decode_image, jpeg_reduction, open_image, split_reduced_decode, train_sampler

# name: (size, count, batch size)
PHOTO_FOLDERS = {"imagenet-sized": ((500, 375), 400, 32), "camera-sized": ((4032, 3024), 120, 16)}


def make_photo_folder(folder, *, size: tuple[int, int], count: int, seed: int = 0) -> int:
    """`count` JPEGs of `size` (w, h): random crops (a third to all of the width, the target's aspect ratio) of
    scikit-learn's two sample photos, rescaled; `<folder>/<photo>/<n>.jpg`. Returns the number written."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = random.Random(seed)
    for index in range(count):
        label = index % len(photos.images)
        photo = Image.fromarray(photos.images[label])
        width = rng.uniform(1 / 3, 1) * min(photo.width, photo.height * size[0] / size[1])
        height = width * size[1] / size[0]
        left, top = rng.uniform(0, photo.width - width), rng.uniform(0, photo.height - height)
        image = photo.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + width, top + height))
        target = Path(folder) / Path(photos.filenames[label]).stem / f"{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)
    return count


def paper_recipe(folder, *extra: str) -> RunConfig:
    """The configuration `hf-vit-reduction train --train_dir folder` resolves: the paper's recipe."""
    return parse_args(["--train_dir", str(folder), "--report_to", "none", *extra])


class OurPipeline:
    """What `hf-vit-reduction train --train_dir folder` builds (the engine's own builders), up to the batch the model
    takes: 1% of the folder held out, one update per batch."""

    def __init__(self, folder, workers: int, batch_size: int, image_size: int):
        flags = {"--workers": workers, "--batch_size": batch_size, "--grad_accum_steps": 1, "--train_val_split": 0.01}
        recipe = paper_recipe(folder, *(str(part) for flag in flags.items() for part in flag))
        accelerator = Accelerator(cpu=True)
        data = engine.load_data(recipe, PartialState())
        self.sampler = train_sampler(data.train, num_processes=1, process_index=0, aug_repeats=0, seed=recipe.seed)
        self.loader, *_ = engine.build_loaders(
            recipe, data, sampler=self.sampler, image_size=image_size, accelerator=accelerator
        )
        self.normalize = Normalize(recipe.mean, recipe.std, device="cpu")
        self.augment = build_batch_augmentation(
            **batch_augmentation_kwargs(recipe), num_classes=len(data.label_names), device="cpu"
        )

    def __len__(self) -> int:
        return len(self.loader)

    def worker_batches(self, epoch: int = 0):
        """The workers' uint8 batches as they arrive."""
        self.sampler.set_epoch(epoch)
        for batch in self.loader:
            yield batch["pixel_values"]

    def batches(self, epoch: int = 0):
        self.sampler.set_epoch(epoch)
        for batch in self.loader:
            yield self.augment(self.normalize(batch["pixel_values"]), batch["labels"])


class TimmPipeline:
    """timm's `create_loader` on its folder dataset, as its train.py sets it up for the paper's flags."""

    def __init__(self, folder, workers: int, batch_size: int, image_size: int):
        self.folder, self.workers, self.batch_size, self.image_size = folder, workers, batch_size, image_size
        self.recipe = paper_recipe(folder)
        self.dataset = create_dataset("", root=str(folder), is_training=True)
        mixup = FastCollateMixup(
            mixup_alpha=self.recipe.mixup,
            cutmix_alpha=self.recipe.cutmix,
            label_smoothing=self.recipe.smoothing,
            num_classes=len(self.dataset.reader.class_to_idx),
        )
        self.loader = self._loader(collate_fn=mixup)

    def _loader(self, **collate):
        recipe = self.recipe
        return create_loader(
            self.dataset,
            input_size=(3, self.image_size, self.image_size),
            batch_size=self.batch_size,
            is_training=True,
            scale=recipe.scale,
            hflip=recipe.hflip,
            auto_augment=recipe.aa,
            re_prob=recipe.reprob,
            re_mode="pixel",
            interpolation=recipe.train_interpolation,
            mean=recipe.mean,
            std=recipe.std,
            num_workers=self.workers,
            use_prefetcher=True,
            device=torch.device("cpu"),
            **collate,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def worker_batches(self, epoch: int = 0):
        """The workers' uint8 batches (`fast_collate`, no Mixup) as they arrive, read below the prefetcher."""
        for images, _ in self._loader().loader:
            yield images

    def batches(self, epoch: int = 0):
        return iter(self.loader)


PIPELINES = {"ours": OurPipeline, "timm": TimmPipeline}


def images_per_second(pipeline, *, warmup: int) -> float:
    """Images/s over one pass after `warmup` batches (worker start-up excluded)."""
    if warmup >= len(pipeline):
        raise ValueError(
            f"warmup={warmup} leaves none of the {len(pipeline)} batches of one pass over the folder to time; "
            "ask for less warm-up or use a larger folder"
        )
    images, start = 0, None
    for count, (batch, _) in enumerate(pipeline.batches()):
        if count == warmup:
            start = time.perf_counter()
        if count >= warmup:
            images += len(batch)
    return images / (time.perf_counter() - start)


def worker_batches_per_second(pipeline, *, warmup: int) -> float:
    """uint8 batches/s the workers deliver over one pass after `warmup` batches, with no batch work after them."""
    count, start = 0, None
    for index, _ in enumerate(pipeline.worker_batches()):
        if index == warmup:
            start = time.perf_counter()
        if index >= warmup:
            count += 1
    if start is None:
        raise ValueError(f"warmup={warmup} leaves no batch of one pass over the folder to time")
    return count / (time.perf_counter() - start)


def decode_paths(folder, *, image_size: int, images: int = 48, seed: int = 0) -> dict:
    """Two ways to the crop on timm's boxes (its `get_params`, bilinear): PIL's decode, crop and resize (what the
    loaders do) against torchvision's `decode_jpeg` with the crop and an antialiased resize on the uint8 tensor.

    Milliseconds per image of each, every image once in each, the two alternating; and |tensor path - PIL| in grey
    levels (mean, the mean of each crop's 99th percentile, the largest)."""
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    crop = RandomResizedCropAndInterpolation(image_size, interpolation="bilinear")
    files = sorted(Path(folder).glob("*/*"))[:images]
    random.seed(seed)
    boxes = [crop.get_params(open_image(path), crop.scale, crop.ratio) for path in files]

    def with_pil(path, box):
        top, left, height, width = box
        image = decode_image(path)
        return np.asarray(
            image.resize((image_size,) * 2, Image.Resampling.BILINEAR, box=(left, top, left + width, top + height))
        )

    def with_tensors(path, box):
        top, left, height, width = box
        pixels = decode_jpeg(read_file(str(path)))[:, top : top + height, left : left + width]
        return resize(pixels, [image_size] * 2, interpolation=InterpolationMode.BILINEAR, antialias=True)

    # torchvision 0.29 deprecates its image decoding for TorchCodec's (one warning per call): one reason the
    # loaders keep PIL.
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
    seconds = {"pil": 0.0, "decode_jpeg": 0.0}
    for path, box in zip(files, boxes):
        for name, path_ in (("pil", with_pil), ("decode_jpeg", with_tensors)):
            start = time.perf_counter()
            path_(path, box)
            seconds[name] += time.perf_counter() - start
    differences = [
        np.abs(
            with_tensors(path, box).permute(1, 2, 0).numpy().astype(np.int16) - with_pil(path, box).astype(np.int16)
        )
        for path, box in zip(files, boxes)
    ]
    return {
        "images": len(files),
        "ms_per_image": {name: 1000 * total / len(files) for name, total in seconds.items()},
        "mean_abs_difference": float(np.mean([d.mean() for d in differences])),
        "p99_abs_difference": float(np.mean([np.percentile(d, 99) for d in differences])),
        "max_abs_difference": int(max(d.max() for d in differences)),
    }


def first_batch_seconds(folder, *, workers: int, batch_size: int, image_size: int) -> dict:
    """Seconds an epoch of ours waits for its first batch: with workers started for it (what every epoch paid before
    workers persisted) and with the workers kept from the epoch before."""
    pipeline = OurPipeline(folder, workers, batch_size, image_size)
    for _ in pipeline.batches(epoch=0):
        pass
    start = time.perf_counter()
    next(pipeline.batches(epoch=1))
    persistent = time.perf_counter() - start
    restarted = OurPipeline(folder, workers, batch_size, image_size)
    start = time.perf_counter()
    next(restarted.batches(epoch=1))
    return {"fresh_workers": time.perf_counter() - start, "persistent_workers": persistent}


def reduced_decode_difference(folder, *, image_size: int, crops: int = 48, seed: int = 0) -> dict:
    """Over random crops of the folder's images: the share decoded at a reduced scale, and there the mean and the
    99th percentile of |reduced - full decode| in grey levels (0-255), after the crop and resize."""
    train, _ = build_transforms(image_size=image_size, **transform_kwargs(paper_recipe(folder)))
    reduced_crop, _ = split_reduced_decode(train)
    timm_crop = train.transforms[0]
    files = sorted(Path(folder).glob("*/*"))
    reduced, means, percentiles = 0, [], []
    for index in range(crops):
        path, decoded = files[index % len(files)], decode_image(files[index % len(files)])
        random.seed(seed + index)
        box = timm_crop.get_params(decoded, timm_crop.scale, timm_crop.ratio)
        random.seed(seed + index)
        ours = np.asarray(reduced_crop(open_image(path)), dtype=np.int16)
        random.seed(seed + index)
        difference = np.abs(ours - np.asarray(timm_crop(decoded), dtype=np.int16))
        if jpeg_reduction((box[3], box[2]), (image_size, image_size)) > 1:
            reduced += 1
            means.append(float(difference.mean()))
            percentiles.append(float(np.percentile(difference, 99)))
    return {
        "crops": crops,
        "reduced_share": reduced / crops,
        "mean_abs_difference": statistics.fmean(means) if means else 0.0,
        "p99_abs_difference": statistics.fmean(percentiles) if percentiles else 0.0,
    }


def run(folder, *, workers: list[int], batch_size: int, warmup: int, image_size: int, rounds: int) -> list[dict]:
    """Median images/s of each loader over `rounds`, the loaders alternating so that drifts hit both alike."""
    rows = []
    for count in workers:
        speeds, worker_speeds = {name: [] for name in PIPELINES}, {name: [] for name in PIPELINES}
        for _ in range(rounds):
            for name, build in PIPELINES.items():
                pipeline = build(folder, count, batch_size, image_size)
                speeds[name].append(images_per_second(pipeline, warmup=warmup))
                worker_speeds[name].append(worker_batches_per_second(pipeline, warmup=warmup))
        medians = {name: statistics.median(values) for name, values in speeds.items()}
        workers_only = {name: statistics.median(values) for name, values in worker_speeds.items()}
        for name, values in speeds.items():
            rows.append(
                {
                    "folder": str(folder),
                    "loader": name,
                    "workers": count,
                    "batch_size": batch_size,
                    "images_per_s": medians[name],
                    "images_per_s_per_worker": medians[name] / max(count, 1),
                    "images_per_s_each_round": values,
                    "ours_over_timm": medians["ours"] / medians["timm"],
                    "uint8_batches_per_s": workers_only[name],
                    "uint8_batches_per_s_per_worker": workers_only[name] / max(count, 1),
                    "uint8_batches_per_s_each_round": worker_speeds[name],
                    "workers_ours_over_timm": workers_only["ours"] / workers_only["timm"],
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        (
            "| folder | workers | ours img/s per worker | timm img/s per worker | ours / timm | "
            "ours uint8 batches/s per worker | timm uint8 batches/s per worker | ours / timm (workers) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ours, timm in zip(rows[::2], rows[1::2]):
        lines.append(
            f"| {Path(ours['folder']).name} | {ours['workers']} | {ours['images_per_s_per_worker']:.1f} | "
            f"{timm['images_per_s_per_worker']:.1f} | {ours['ours_over_timm']:.2f}x | "
            f"{ours['uint8_batches_per_s_per_worker']:.2f} | {timm['uint8_batches_per_s_per_worker']:.2f} | "
            f"{ours['workers_ours_over_timm']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(
        "data-benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", default=None, help="write (once) and measure DIR/imagenet-sized, DIR/camera-sized")
    parser.add_argument("--folder", nargs="+", default=[], help="ImageNet-layout folders of your own images")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--batch_size", type=int, default=32, help="for --folder")
    parser.add_argument("--warmup", type=int, default=2, help="batches of each pass left out of the timing")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per loader")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    # One thread for the main process's batch work, as DataLoader gives each worker: with more, OpenMP's threads
    # spin against the workers for the same cores (on a loaded 2-core machine a batch's stack took 0.7 s, not 9 ms).
    torch.set_num_threads(1)
    if args.photos is None and not args.folder:
        parser.error("give --photos DIR or --folder DIR ...")
    if min(args.workers) < 0:
        parser.error(f"--workers {min(args.workers)} is not valid; allowed: 0 or more")
    folders = [(Path(folder), args.batch_size) for folder in args.folder]
    for name, (size, count, batch_size) in PHOTO_FOLDERS.items() if args.photos else ():
        folder = Path(args.photos) / name
        if not folder.is_dir():
            make_photo_folder(folder, size=size, count=count)
        folders.append((folder, batch_size))
    report = {"speed": [], "epoch_start_seconds": {}, "reduced_decode": {}, "decode_paths": {}}
    for folder, batch_size in folders:
        common = {"batch_size": batch_size, "image_size": args.image_size}
        report["speed"] += run(folder, workers=args.workers, warmup=args.warmup, rounds=args.rounds, **common)
        report["reduced_decode"][str(folder)] = reduced_decode_difference(folder, image_size=args.image_size)
        report["decode_paths"][str(folder)] = decode_paths(folder, image_size=args.image_size)
        if max(args.workers) > 0:
            start = first_batch_seconds(folder, workers=max(args.workers), **common)
            report["epoch_start_seconds"][str(folder)] = start
    print(format_table(report["speed"]))
    for folder, start in report["epoch_start_seconds"].items():
        print(
            f"{Path(folder).name}: first batch of an epoch after {start['fresh_workers']:.2f} s with workers started "
            f"for it, {start['persistent_workers']:.2f} s with persistent workers"
        )
    for folder, difference in report["reduced_decode"].items():
        print(
            f"{Path(folder).name}: {difference['reduced_share']:.0%} of crops decoded at a reduced scale; there "
            f"|reduced - full| = {difference['mean_abs_difference']:.2f} grey levels on average, "
            f"{difference['p99_abs_difference']:.1f} at the 99th percentile"
        )
    for folder, paths in report["decode_paths"].items():
        ms = paths["ms_per_image"]
        print(
            f"{Path(folder).name}: decode, crop and resize {ms['pil']:.2f} ms per image with PIL, "
            f"{ms['decode_jpeg']:.2f} ms with decode_jpeg and uint8 tensors, |tensors - PIL| = "
            f"{paths['mean_abs_difference']:.3f} grey levels on average, {paths['max_abs_difference']} at most"
        )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2) + "\n")
