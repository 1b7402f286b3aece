"""Data: 🤗 Datasets loading (Hub, local, image folders, embedded digits), timm transforms, samplers, bad images."""

import ctypes
import ctypes.util
import io
import os
from dataclasses import dataclass, field

import datasets
import datasets.distributed
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, DistributedSampler, default_collate
from transformers import ViTImageProcessor

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
}
DIGITS_VALIDATION_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass
class ImageClassificationData:
    """Train and validation splits with the columns and labels that the rest of a run needs."""

    train: datasets.Dataset | datasets.IterableDataset
    validation: datasets.Dataset
    image_column: str
    label_column: str
    label_names: list[str]
    source: str = field(default="")


# The parameters of `load_image_classification_data`, which the training script's flags carry by the same names.
LOADING_ARGUMENTS = (
    "dataset_name",
    "dataset_config_name",
    "train_dir",
    "validation_dir",
    "train_split",
    "validation_split",
    "image_column",
    "label_column",
    "streaming",
    "cache_dir",
    "train_val_split",
    "seed",
)


def take(dataset, count: int):
    """The first `count` examples of a split or a stream."""
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(count)
    return dataset.select(range(min(count, len(dataset))))


def load_digits() -> datasets.DatasetDict:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) with a fixed stratified split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    indices = np.arange(len(pixels))
    train_indices, validation_indices = train_test_split(
        indices,
        test_size=DIGITS_VALIDATION_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
        }
    )

    def split(selected):
        images = [Image.fromarray(pixels[i], mode="L") for i in selected]
        return datasets.Dataset.from_dict(
            {"image": images, "label": digits.target[selected].tolist()},
            features=features,
        )

    return datasets.DatasetDict(train=split(train_indices), validation=split(validation_indices))


def _check_image_folder(path: str, flag: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag}={path!r} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{flag}={path!r} is not a folder (expected class sub-folders of images)")
    for _, _, files in os.walk(path):
        if any(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for name in files):
            return
    raise ValueError(f"{flag}={path!r} holds no image files (expected <class>/<image> as in ImageNet's layout)")


def _detect_column(
    dataset,
    wanted: str | None,
    feature_type,
    fallbacks: tuple[str, ...],
    what: str,
    flag: str,
):
    features = dataset.features or {}
    names = list(features) if features else list(dataset.column_names or [])
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{flag}={wanted!r} is not a column of the dataset; columns: {names}")
        return wanted
    for name, feature in features.items():
        if isinstance(feature, feature_type):
            return name
    for name in fallbacks:
        if name in names:
            return name
    raise ValueError(f"the dataset has no {what} column (columns: {names}); name it with {flag}")


def load_image_classification_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    train_split: str = "train",
    validation_split: str = "validation",
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    train_val_split: float = 0.15,
    seed: int = 0,
) -> ImageClassificationData:
    """Load the splits of a Hub/local dataset, of image folders, or (with no source) the embedded digits.

    Every problem a run could only discover later (missing path, empty folder, unknown split, no label column)
    is raised here, before any model is built.
    """
    if dataset_name and (train_dir or validation_dir):
        raise ValueError("give either dataset_name or train_dir/validation_dir, not both")
    if validation_dir and not train_dir:
        raise ValueError(f"validation_dir={validation_dir!r} needs train_dir as well")
    if train_dir:
        _check_image_folder(train_dir, "train_dir")
        data_files = {train_split: os.path.join(train_dir, "**")}
        if validation_dir:
            _check_image_folder(validation_dir, "validation_dir")
            data_files[validation_split] = os.path.join(validation_dir, "**")
        builder, builder_kwargs, available = (
            "imagefolder",
            {"data_files": data_files},
            list(data_files),
        )
        source = f"imagefolder:{train_dir}"
    elif dataset_name and os.path.isfile(os.path.join(dataset_name, "dataset_dict.json")):
        builder, source = None, dataset_name
        splits = datasets.load_from_disk(dataset_name)
        available = list(splits)
    elif dataset_name:
        builder, builder_kwargs, source = (
            dataset_name,
            {"name": dataset_config_name},
            dataset_name,
        )
        available = datasets.get_dataset_split_names(dataset_name, dataset_config_name, cache_dir=cache_dir)
    else:
        builder, source = None, "digits (scikit-learn, embedded)"
        splits = load_digits()
        available = list(splits)

    if train_split not in available:
        raise ValueError(f"train_split={train_split!r} does not exist in {source}; splits: {available}")
    has_validation = validation_split in available
    if not has_validation and (validation_dir or (dataset_name and validation_split != "validation") or streaming):
        raise ValueError(f"validation_split={validation_split!r} does not exist in {source}; splits: {available}")

    if builder is not None:

        def load(split, stream=False):
            return datasets.load_dataset(
                builder,
                split=split,
                cache_dir=cache_dir,
                streaming=stream,
                **builder_kwargs,
            )

        # Streaming applies to the (large) train split; evaluation needs a sized split to count every example once.
        train = load(train_split, streaming)
        validation = load(validation_split) if has_validation else None
    else:
        if streaming:
            raise ValueError(f"streaming=True needs a Hub dataset or files, not {source}")
        train = splits[train_split]
        validation = splits[validation_split] if has_validation else None
    if validation is None:
        # Like Transformers' example script: hold out part of train when the source has no validation split.
        held_out = train.train_test_split(test_size=train_val_split, seed=seed)
        train, validation = held_out["train"], held_out["test"]

    image_column = _detect_column(
        validation,
        image_column,
        datasets.Image,
        ("image", "img", "pixel_values"),
        "image",
        "image_column",
    )
    label_column = _detect_column(
        validation,
        label_column,
        datasets.ClassLabel,
        ("label", "labels", "target"),
        "label",
        "label_column",
    )
    label_feature = validation.features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        label_names = list(label_feature.names)
    else:
        label_names = [str(i) for i in range(int(max(validation[label_column])) + 1)]
    if len(label_names) < 2:
        raise ValueError(f"label_column={label_column!r} has {len(label_names)} class(es); at least 2 are needed")
    return ImageClassificationData(train, validation, image_column, label_column, label_names, source)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16/32-bit grey is rescaled, transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and array.max() > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_image(value) -> Image.Image:
    """An undecoded `datasets.Image` value (dict with bytes/path), a PIL image or a path, fully loaded as RGB."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        image = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    else:
        image = Image.open(value)
    image.load()  # decode now, so a truncated file fails here and not inside a transform
    return to_rgb(image)


def image_description(value) -> str:
    if isinstance(value, dict):
        return value.get("path") or "<in-memory image>"
    return str(getattr(value, "filename", "") or value)


def build_transforms(
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    reprob: float = 0.25,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
):
    """timm's ImageNet train transform (RandomResizedCrop, flip, RandAugment, RandomErasing) and eval transform."""
    train = create_transform(
        input_size=image_size,
        is_training=True,
        scale=scale,
        hflip=hflip,
        auto_augment=auto_augment or None,
        interpolation=interpolation,
        mean=mean,
        std=std,
        re_prob=reprob,
        re_mode="pixel",
        re_count=1,
    )
    evaluation = create_transform(
        input_size=image_size,
        is_training=False,
        interpolation=interpolation,
        mean=mean,
        std=std,
        crop_pct=crop_pct,
    )
    return train, evaluation


class ExampleTransform:
    """Batched `with_transform` function: decodes, converts to RGB and transforms each image.

    An unreadable image raises with `on_bad_image="error"`; otherwise it is marked bad and either dropped by
    `collate` (training) or, given `placeholder_size`, kept as a blank image labelled -1 so that every process of
    an evaluation still holds equal batches for the gather.
    """

    def __init__(
        self,
        transform,
        image_column,
        label_column,
        on_bad_image="skip",
        placeholder_size=None,
    ):
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image={on_bad_image!r} is not valid; allowed: 'skip', 'error'")
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.on_bad_image = on_bad_image
        self.placeholder_size = placeholder_size

    def __call__(self, batch: dict) -> dict:
        pixel_values, bad = [], []
        for value in batch[self.image_column]:
            try:
                image = decode_image(value)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
                if self.on_bad_image == "error":
                    raise ValueError(f"cannot read image {image_description(value)}: {error}") from error
                size = self.placeholder_size
                pixel_values.append(None if size is None else torch.zeros(3, size, size))
                bad.append(image_description(value))
                continue
            pixel_values.append(self.transform(image))
            bad.append(None)
        return {
            "pixel_values": pixel_values,
            "labels": list(batch[self.label_column]),
            "bad_image": bad,
        }


def prepare_dataset(dataset, transform: ExampleTransform):
    """Attach the transform lazily; images stay encoded until a DataLoader worker reads them."""
    dataset = dataset.cast_column(transform.image_column, datasets.Image(decode=False))
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(transform, batched=True, remove_columns=list(dataset.column_names or []))
    return dataset.with_transform(transform)


def in_memory(dataset) -> list[dict]:
    """Every example transformed once and held as tensors: data "from memory" for timing the loop alone."""
    return [dataset[i] for i in range(len(dataset))]


def collate(examples: list[dict]) -> dict:
    """Stack the examples, dropping bad ones without a placeholder (labelled -1 with one); list the bad ones."""
    kept = [e for e in examples if e["pixel_values"] is not None]
    # default_collate stacks straight into shared memory inside a worker; torch.stack would cost one more copy
    # of the batch when it is sent to the main process.
    pixel_values = default_collate([e["pixel_values"] for e in kept]) if kept else torch.empty(0, 3, 1, 1)
    labels = [-1 if e["bad_image"] is not None else int(e["labels"]) for e in kept]
    return {
        "pixel_values": pixel_values,
        "labels": torch.tensor(labels, dtype=torch.long),
        "bad_images": [e["bad_image"] for e in examples if e["bad_image"] is not None],
    }


def shard_stream(
    dataset,
    num_processes: int,
    process_index: int,
    seed: int,
    buffer_size: int = 10_000,
):
    """A streamed train split: each process reads its own part, shuffled through a buffer."""
    part = datasets.distributed.split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
    return part.shuffle(seed=seed, buffer_size=buffer_size)


def train_sampler(dataset, num_processes: int, process_index: int, aug_repeats: int, seed: int):
    """timm's choice: RepeatAugSampler when distributed with repeats, else a shuffling DistributedSampler.

    The sampler shards the data itself, so the train loader must not be sharded again by Accelerate. A stream
    has no sampler (see `shard_stream`).
    """
    if isinstance(dataset, datasets.IterableDataset):
        return None
    if num_processes > 1 and aug_repeats > 0:
        return RepeatAugSampler(
            dataset,
            num_replicas=num_processes,
            rank=process_index,
            num_repeats=aug_repeats,
        )
    if num_processes > 1:
        return DistributedSampler(
            dataset,
            num_replicas=num_processes,
            rank=process_index,
            shuffle=True,
            seed=seed,
        )
    # A one-replica DistributedSampler shuffles as a function of (seed, epoch), so a resumed run sees the same order.
    return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def retain_worker_heap(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: keep a worker's freed heap instead of giving it back to the OS every batch.

    A worker holds a whole batch of per-image float tensors (38 MB at 64 x 224 px) until collation, then frees
    them. Whether glibc trims that memory and faults it back in on the next batch depends on where small
    long-lived objects land in the heap; in the unlucky case (seen in 5 of 11 probe runs, and in 2 of 11 of timm's
    loader) a worker takes 7,000-13,500 extra page faults per batch and loses ~10% of its images/s. Fixed thresholds
    make the steady state the lucky one; a worker's heap then stays at its peak, about two batches' worth.
    """
    library = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(library), "mallopt", None) if library else None
    if mallopt is None:  # not glibc: nothing to tune
        return
    # glibc's maximum; set first, as setting either threshold ends the dynamic adjustment of both.
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


def train_loader(dataset, batch_size: int, sampler, workers: int, pin_memory: bool, seed: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,  # Mixup pairs the batch with its flip and needs an even, full batch
        collate_fn=collate,
        worker_init_fn=retain_worker_heap,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(dataset, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        worker_init_fn=retain_worker_heap,
        persistent_workers=workers > 0,
    )


def image_processor_for(image_size: int, mean, std) -> ViTImageProcessor:
    """The processor saved beside a trained model, so `pipeline("image-classification")` sees what evaluation saw."""
    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BICUBIC,
        image_mean=list(mean),
        image_std=list(std),
    )
