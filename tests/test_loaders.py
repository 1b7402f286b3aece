import argparse
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from image_folders import truncated_jpeg, write_folder
from PIL import Image

from hf_vit_reduction.training import loaders
from hf_vit_reduction.training.data import load_digits, load_image_classification_data
from hf_vit_reduction.training.loop_benchmark import in_memory
from hf_vit_reduction.training.recipe import PAPER_RECIPE, build_transforms


def transforms(size, **recipe):
    return build_transforms(
        argparse.Namespace(**{**PAPER_RECIPE, **recipe}), image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3
    )


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 77, (77, 77, 77)),
        ("LA", (77, 0), (255, 255, 255)),  # fully transparent: the white background
        ("LA", (77, 255), (77, 77, 77)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 257 * 100, (100, 100, 100)),
        ("I", 65535, (255, 255, 255)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_any_mode_becomes_8bit_rgb(mode, value, expected):
    image = loaders.to_rgb(Image.new(mode, (2, 2), value))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == expected


def test_palette_with_transparency_becomes_rgb():
    image = Image.new("P", (2, 2), 0)
    image.putpalette([200, 10, 10] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    assert loaders.to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    del image.info["transparency"]
    assert loaders.to_rgb(image).getpixel((0, 0)) == (200, 10, 10)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    write_folder(tmp_path / "train")
    truncated_jpeg(tmp_path / "train" / "cat" / "broken.jpg")
    (tmp_path / "train" / "dog" / "empty.png").write_bytes(b"")
    data = load_image_classification_data(train_dir=str(tmp_path / "train"), train_val_split=0.01)
    split = datasets.concatenate_datasets([data.train, data.validation])
    train_transform, eval_transform = transforms(16)
    skip = loaders.prepare_dataset(
        split, loaders.ExampleTransform(train_transform, image_column="image", label_column="label")
    )
    batch = loaders.collate([skip[i] for i in range(len(skip))])
    assert batch["pixel_values"].shape == (6, 3, 16, 16)
    assert len(batch["labels"]) == 6
    assert sorted(p.rsplit("/", 1)[-1] for p in batch["bad_images"]) == ["broken.jpg", "empty.png"]

    placeholder = loaders.prepare_dataset(
        split,
        loaders.ExampleTransform(eval_transform, image_column="image", label_column="label", placeholder_size=16),
    )
    batch = loaders.collate([placeholder[i] for i in range(len(placeholder))])
    assert batch["pixel_values"].shape == (8, 3, 16, 16)
    assert (batch["labels"] == -1).sum() == 2

    strict = loaders.prepare_dataset(
        split,
        loaders.ExampleTransform(eval_transform, image_column="image", label_column="label", on_bad_image="error"),
    )
    with pytest.raises(ValueError, match=r"cannot read image .*(broken\.jpg|empty\.png)"):
        [strict[i] for i in range(len(strict))]


def test_repeated_augmentation_partitions_across_two_ranks():
    dataset = list(range(512))
    ranks = [
        loaders.train_sampler(dataset, num_processes=2, process_index=rank, aug_repeats=3, seed=0) for rank in range(2)
    ]
    for sampler in ranks:
        sampler.set_epoch(1)
    indices = [list(sampler) for sampler in ranks]
    assert len(indices[0]) == len(indices[1]) == 256
    # The repeats of an image are consecutive and dealt round-robin, so each image is seen by both ranks
    # (two augmented copies on one, one on the other), never three times by a single rank.
    seen = [set(rank_indices) for rank_indices in indices]
    assert len(seen[0] & seen[1]) >= 0.99 * len(seen[0] | seen[1])
    counts = [np.bincount(rank_indices, minlength=512) for rank_indices in indices]
    assert max(counts[0].max(), counts[1].max()) == 2
    assert set((counts[0] + counts[1])[counts[0] + counts[1] > 0]) <= {1, 2, 3}
    # Deterministic per epoch and different between epochs.
    ranks[0].set_epoch(1)
    assert list(ranks[0]) == indices[0]
    ranks[0].set_epoch(2)
    assert list(ranks[0]) != indices[0]


def test_single_process_sampler_is_a_function_of_seed_and_epoch():
    sampler = loaders.train_sampler(list(range(100)), num_processes=1, process_index=0, aug_repeats=3, seed=5)
    sampler.set_epoch(3)
    order = list(sampler)
    # --aug_repeats applies only when distributed (timm's create_loader refuses repeats in one process): an epoch is
    # one pass over the dataset, shuffled as torch's DistributedSampler does, by a generator seeded with seed + epoch.
    assert order == torch.randperm(100, generator=torch.Generator().manual_seed(5 + 3)).tolist()
    assert sorted(order) == list(range(100)) and order != list(range(100))
    again = loaders.train_sampler(list(range(100)), num_processes=1, process_index=0, aug_repeats=3, seed=5)
    again.set_epoch(3)
    assert list(again) == order
    sampler.set_epoch(4)
    next_epoch = list(sampler)
    assert sorted(next_epoch) == list(range(100)) and next_epoch != order


def test_eval_transform_turns_any_image_into_a_normalized_square():
    _, evaluation = transforms(32)
    out = evaluation(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert out.shape == (3, 32, 32) and torch.allclose(out, torch.ones_like(out))


def _folder_image(pixels: torch.Tensor, label: int) -> tuple[int, int]:
    """(class, index) of a write_folder image from its normalized (mean = std = 0.5) pixels and label."""
    red, green, _ = (round(float(value) * 127.5 + 127.5) for value in pixels[:, 0, 0])
    assert red == 40 * label and green % 10 == 0
    return label, green // 10


def test_streaming_reads_train_as_a_stream_sharded_across_processes(tmp_path):
    write_folder(tmp_path / "ds" / "train", per_class=8)
    write_folder(tmp_path / "ds" / "validation", per_class=2)
    data = load_image_classification_data(dataset_name=str(tmp_path / "ds"), streaming=True)
    assert isinstance(data.train, datasets.IterableDataset)
    assert isinstance(data.validation, datasets.Dataset) and len(data.validation) == 4
    # The evaluation transform keeps each one-colour image's colour, so the colour names the image a rank read.
    _, eval_transform = transforms(16)
    stream = loaders.prepare_dataset(
        data.train, loaders.ExampleTransform(eval_transform, image_column="image", label_column="label")
    )
    parts = [loaders.shard_stream(stream, num_processes=2, process_index=rank, seed=0) for rank in range(2)]
    assert loaders.train_sampler(parts[0], num_processes=2, process_index=0, aug_repeats=3, seed=0) is None
    read = [[_folder_image(e["pixel_values"], e["labels"]) for e in part] for part in parts]
    assert len(set(read[0])) == len(read[0]) and len(set(read[1])) == len(read[1])
    assert set(read[0]).isdisjoint(read[1])
    # write_folder's image i of class c is coloured (40 * c, 10 * i, 0).
    assert set(read[0]) | set(read[1]) == {(c, i) for c in range(2) for i in range(8)}
    with pytest.raises(ValueError, match=r"validation_split='dev' does not exist"):
        load_image_classification_data(dataset_name=str(tmp_path / "ds"), streaming=True, validation_split="dev")


def collate_and_report_sharing(examples):
    batch = loaders.collate(examples)
    return batch, batch["pixel_values"].is_shared()


@pytest.mark.slow
def test_workers_collate_straight_into_shared_memory(digits):
    """A batch built in a worker is already shared: sending it costs no extra copy of the pixels."""
    _, eval_transform = transforms(16)
    dataset = loaders.prepare_dataset(
        digits["train"], loaders.ExampleTransform(eval_transform, image_column="image", label_column="label")
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collate_and_report_sharing)
    batch, shared_in_worker = next(iter(loader))
    assert shared_in_worker
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert not loaders.collate([dataset[0]])["pixel_values"].is_shared()  # main process


def test_loaders_keep_their_workers_heap(digits):
    dataset = in_memory(digits["validation"].select(range(4)))
    sampler = loaders.train_sampler(dataset, num_processes=1, process_index=0, aug_repeats=0, seed=0)
    built = [
        loaders.train_loader(dataset, batch_size=2, sampler=sampler, workers=1, pin_memory=False, seed=0),
        loaders.eval_loader(dataset, batch_size=2, workers=1, pin_memory=False),
    ]
    assert all(loader.worker_init_fn is loaders.retain_worker_heap for loader in built)


HEAP_PROBE = """
import ctypes, sys
from hf_vit_reduction.training.loaders import retain_worker_heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            return [int(x, 16) for x in line.split()[0].split("-")]
if sys.argv[1] == "retain":
    retain_worker_heap(0)
block = libc.malloc(20 << 20)
start, end = heap()
libc.free(block)
print(start <= block < end, heap()[1] < end)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, expected",
    [
        ("default", "False False"),  # glibc mmaps a 20 MB block and unmaps it on free
        ("retain", "True False"),  # from the heap, and the heap keeps it after free
    ],
)
def test_retain_worker_heap_serves_big_blocks_from_a_kept_heap(mode, expected):
    result = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[0] == expected


def test_an_image_held_as_bytes_is_named_by_its_content():
    broken = {"bytes": b"not an image", "path": None}
    name = loaders.image_description(broken)
    assert name.startswith("<image bytes sha1:") and name == loaders.image_description(dict(broken))
    assert name != loaders.image_description({"bytes": b"another broken image", "path": None})
    assert loaders.image_description({"bytes": b"x", "path": "train/cat/1.jpg"}) == "train/cat/1.jpg"
