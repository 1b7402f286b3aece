"""From examples to batches: decoding any image to RGB, unreadable images, collation, samplers and DataLoaders."""

import ctypes
import ctypes.util
import hashlib
import io

import datasets
import datasets.distributed
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, DistributedSampler, default_collate

# What PIL raises for a file that is not an image, is truncated or is empty.
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)


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
    """The image's file, or for an image held as bytes a digest of them: one name per image, however often drawn."""
    if isinstance(value, dict):
        if value.get("path"):
            return value["path"]
        return f"<image bytes sha1:{hashlib.sha1(value.get('bytes') or b'').hexdigest()[:12]}>"
    return str(getattr(value, "filename", "") or value)


class ExampleTransform:
    """Batched `with_transform` function: decodes, converts to RGB and transforms each image.

    An unreadable image raises with `on_bad_image="error"`; otherwise it is marked bad and either dropped by
    `collate` (training) or, given `placeholder_size`, kept as a blank image labelled -1 so that every process of
    an evaluation still holds equal batches for the gather.
    """

    def __init__(self, transform, *, image_column, label_column, on_bad_image="skip", placeholder_size=None):
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
            except UNREADABLE_IMAGE_ERRORS as error:
                if self.on_bad_image == "error":
                    raise ValueError(f"cannot read image {image_description(value)}: {error}") from error
                size = self.placeholder_size
                pixel_values.append(None if size is None else torch.zeros(3, size, size))
                bad.append(image_description(value))
                continue
            pixel_values.append(self.transform(image))
            bad.append(None)
        return {"pixel_values": pixel_values, "labels": list(batch[self.label_column]), "bad_image": bad}


def prepare_dataset(dataset, transform: ExampleTransform):
    """Attach the transform lazily; images stay encoded until a DataLoader worker reads them."""
    dataset = dataset.cast_column(transform.image_column, datasets.Image(decode=False))
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(transform, batched=True, remove_columns=list(dataset.column_names or []))
    return dataset.with_transform(transform)


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


def shard_stream(dataset, *, num_processes: int, process_index: int, seed: int, buffer_size: int = 10_000):
    """A streamed train split: each process reads its own part, shuffled through a buffer."""
    part = datasets.distributed.split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
    return part.shuffle(seed=seed, buffer_size=buffer_size)


def train_sampler(dataset, *, num_processes: int, process_index: int, aug_repeats: int, seed: int):
    """timm's choice: RepeatAugSampler when distributed with repeats, else a shuffling DistributedSampler.

    The sampler shards the data itself, so the train loader must not be sharded again by Accelerate. A stream
    has no sampler (see `shard_stream`).
    """
    if isinstance(dataset, datasets.IterableDataset):
        return None
    if num_processes > 1 and aug_repeats > 0:
        return RepeatAugSampler(dataset, num_replicas=num_processes, rank=process_index, num_repeats=aug_repeats)
    if num_processes > 1:
        return DistributedSampler(dataset, num_replicas=num_processes, rank=process_index, shuffle=True, seed=seed)
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


def train_loader(dataset, *, batch_size: int, sampler, workers: int, pin_memory: bool, seed: int) -> DataLoader:
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


def eval_loader(dataset, *, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
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


def build_train_loader(dataset, args, *, sampler, num_processes: int, process_index: int) -> DataLoader:
    """The training DataLoader from the run's flags; a stream is sharded and shuffled here, others by `sampler`."""
    if isinstance(dataset, datasets.IterableDataset):
        dataset = shard_stream(dataset, num_processes=num_processes, process_index=process_index, seed=args.seed)
    return train_loader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        workers=args.workers,
        pin_memory=args.pin_mem,
        seed=args.seed,
    )
