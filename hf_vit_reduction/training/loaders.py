"""From examples to batches: decoding any image to RGB (a JPEG only as far as its crop needs), unreadable images,
per-example random draws, collation of uint8 images, samplers and DataLoaders."""

import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import random

import datasets
import datasets.distributed
import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image, UnidentifiedImageError
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate
from torchvision.transforms import Compose

# What PIL raises for a file that is not an image, is truncated or is empty, or has more pixels than Pillow's
# decompression-bomb limit allows (Image.MAX_IMAGE_PIXELS).
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


class UnreadableImageError(ValueError):
    """An image that cannot be decoded, under `on_bad_image="error"`: its message names the image and the cause."""

    def line(self) -> str:
        """The message alone. Raised in a DataLoader worker, the exception reaches the main process rebuilt from the
        worker's traceback text, whose last line is `...UnreadableImageError: <message>`."""
        return str(self).strip().rsplit(f"{type(self).__name__}: ", 1)[-1]


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


def open_image(value) -> Image.Image:
    """An undecoded `datasets.Image` value (dict with bytes/path), a PIL image or a path, opened: size and mode known,
    pixels not decoded yet."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    return Image.open(value)


def decode_image(value) -> Image.Image:
    """`open_image`, fully decoded as RGB."""
    image = open_image(value)
    image.load()  # decode now, so a truncated file fails here and not inside a transform
    return to_rgb(image)


# libjpeg's DCT scaling (`Image.draft`), largest reduction first.
JPEG_REDUCTIONS = (8, 4, 2)


def jpeg_reduction(box_size: tuple[int, int], output_size: tuple[int, int]) -> int:
    """The largest JPEG reduction that still leaves at least `output_size` (w, h) pixels over `box_size` (w, h)."""
    for reduction in JPEG_REDUCTIONS:
        if box_size[0] >= reduction * output_size[0] and box_size[1] >= reduction * output_size[1]:
            return reduction
    return 1


class ReducedDecodeResizedCrop:
    """timm's `RandomResizedCropAndInterpolation` drawn on the encoded image, then decoding only what the box needs.

    The box is drawn with timm's own `get_params` on the full size (read from the header), and the interpolation
    with timm's draw after it, so the random draws and the boxes are timm's. A JPEG whose box spans at least 2x the
    output size is then decoded at the largest DCT scale (1/2, 1/4, 1/8) that keeps at least the output resolution
    over the box, and the box is resized from there; anything else is decoded whole and cropped and resized exactly
    as timm does. The reduced decode differs from the full one by a few grey levels (bounded in tests/test_loaders.py,
    measured by data_benchmark); a 12-megapixel JPEG decodes 3-4x faster at 1/2 to 1/8 scale than whole.
    """

    def __init__(self, crop: RandomResizedCropAndInterpolation):
        self.crop = crop

    def __call__(self, image: Image.Image) -> Image.Image:
        """`image` opened (`open_image`), not yet decoded; returns the RGB crop at the output size."""
        crop = self.crop
        top, left, height, width = crop.get_params(image, crop.scale, crop.ratio)
        interpolation = crop.interpolation
        if isinstance(interpolation, (tuple, list)):
            interpolation = random.choice(interpolation)
        output_height, output_width = crop.size
        reduction = jpeg_reduction((width, height), (output_width, output_height))
        full_width = image.width
        drafted = (
            image.draft(image.mode, (image.width // reduction, image.height // reduction)) if reduction > 1 else None
        )
        image.load()
        image = to_rgb(image)
        if drafted is None:
            return F.resized_crop(image, top, left, height, width, list(crop.size), interpolation)
        scale = drafted[1][2] / full_width  # the decoded size over the full size: 1/2, 1/4 or 1/8
        box = (left * scale, top * scale, (left + width) * scale, (top + height) * scale)
        return image.resize((output_width, output_height), F.pil_modes_mapping[interpolation], box=box)


def split_reduced_decode(transform):
    """(`ReducedDecodeResizedCrop`, the rest) for a Compose starting with timm's random resized crop, else None."""
    if isinstance(transform, Compose) and isinstance(transform.transforms[0], RandomResizedCropAndInterpolation):
        return ReducedDecodeResizedCrop(transform.transforms[0]), Compose(transform.transforms[1:])
    return None


def image_description(value) -> str:
    """The image's file, or for an image held as bytes a digest of them: one name per image, however often drawn."""
    if isinstance(value, dict):
        if value.get("path"):
            return value["path"]
        return f"<image bytes sha1:{hashlib.sha1(value.get('bytes') or b'').hexdigest()[:12]}>"
    return str(getattr(value, "filename", "") or value)


class ExampleTransform:
    """Batched `with_transform` function: decodes, converts to RGB and transforms each image to a uint8 tensor.

    A transform that starts with timm's random resized crop draws its box before decoding and decodes a JPEG only
    as far as that box needs (`ReducedDecodeResizedCrop`).

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
        self.reduced_decode = split_reduced_decode(transform)

    def __call__(self, batch: dict) -> dict:
        pixel_values, bad = [], []
        for value in batch[self.image_column]:
            try:
                if self.reduced_decode is None:
                    image, transform = decode_image(value), self.transform
                else:
                    crop, transform = self.reduced_decode
                    image = crop(open_image(value))
            except UNREADABLE_IMAGE_ERRORS as error:
                if self.on_bad_image == "error":
                    raise UnreadableImageError(f"cannot read image {image_description(value)}: {error}") from error
                size = self.placeholder_size
                pixel_values.append(None if size is None else torch.zeros(3, size, size, dtype=torch.uint8))
                bad.append(image_description(value))
                continue
            pixel_values.append(transform(image))
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
    pixel_values = (
        default_collate([e["pixel_values"] for e in kept]) if kept else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    )
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


class DrawSampler(Sampler):
    """A sampler's indices, each with the key of its random draws: (epoch, rank, position in the rank's epoch).

    The epoch is read from the sampler (`set_epoch`) when an epoch starts. Keys differ between the copies of an
    image that repeated augmentation deals to several ranks or twice to one, so each copy is augmented its own way.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        epoch, rank = self.sampler.epoch, getattr(self.sampler, "rank", 0)
        return (((epoch, rank, position), index) for position, index in enumerate(self.sampler))

    def __len__(self) -> int:
        return len(self.sampler)


class SeededExamples(torch.utils.data.Dataset):
    """Reads `dataset[index]` for a `DrawSampler` item with Python's, NumPy's and torch's RNGs seeded from the run's
    seed and the draw's key, restoring them after.

    An example's random augmentation is then a function of the run's seed and its place in the epoch alone: the same
    whichever worker draws it, however many workers there are, and whether they were started for this epoch or kept
    from the last (persistent workers), so a resumed run draws exactly what the uninterrupted one did.
    """

    def __init__(self, dataset, *, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[tuple[int, int, int], int]):
        key, index = item
        digest = hashlib.blake2b(repr((self.seed, *key)).encode(), digest_size=8).digest()
        with rngs_seeded(int.from_bytes(digest, "little")):
            return self.dataset[index]


@contextlib.contextmanager
def rngs_seeded(seed: int):
    """Python's, NumPy's and torch's CPU RNGs seeded from `seed` (64 bits) for the block.

    In the main process (no workers) they are restored after, so the training loop's own draws are untouched; a
    worker's RNGs serve only its examples and are left as they are (saving NumPy's state alone costs ~0.2-0.4 ms,
    a tenth of an image's augmentation).
    """
    in_main_process = torch.utils.data.get_worker_info() is None
    if in_main_process:
        states = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed)  # not CUDA's, which the main process's training draws from
    try:
        yield
    finally:
        if in_main_process:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.default_generator.set_state(states[2])


def train_loader(dataset, *, batch_size: int, sampler, workers: int, pin_memory: bool, seed: int) -> DataLoader:
    """Batches of uint8 images. With a sampler, each example's augmentation is seeded from the run's seed and its
    (epoch, rank, position) and the workers persist across epochs; a stream (no sampler) draws from worker seeds,
    its workers started per epoch.
    """
    if sampler is not None:
        dataset, sampler = SeededExamples(dataset, seed=seed), DrawSampler(sampler)
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
        persistent_workers=workers > 0 and sampler is not None,
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


def build_train_loader(
    dataset,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    seed: int,
    sampler,
    num_processes: int,
    process_index: int,
) -> DataLoader:
    """The training DataLoader; a stream is sharded and shuffled here, others by `sampler`."""
    if isinstance(dataset, datasets.IterableDataset):
        dataset = shard_stream(dataset, num_processes=num_processes, process_index=process_index, seed=seed)
    return train_loader(
        dataset, batch_size=batch_size, sampler=sampler, workers=workers, pin_memory=pin_memory, seed=seed
    )
