import dataclasses
import functools
import io
import itertools
import random
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from image_folders import truncated_jpeg, write_folder
from PIL import Image

from hf_vit_reduction.training import loaders
from hf_vit_reduction.training.arguments import parse_args
from hf_vit_reduction.training.builders import build_transforms
from hf_vit_reduction.training.config import transform_kwargs
from hf_vit_reduction.training.data import load_digits, load_image_classification_data
from hf_vit_reduction.training.loop_benchmark import in_memory


def transforms(size, **recipe):
    config = dataclasses.replace(parse_args(["--dataset_name", "imagenet-1k"]), **recipe)
    return build_transforms(image_size=size, **transform_kwargs(config))


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


def test_eval_transform_turns_any_image_into_a_uint8_square():
    _, evaluation = transforms(32)
    out = evaluation(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and bool((out == 255).all())


def _folder_image(pixels: torch.Tensor, label: int) -> tuple[int, int]:
    """(class, index) of a write_folder image from its uint8 pixels and label."""
    red, green, _ = (int(value) for value in pixels[:, 0, 0])
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


@functools.cache
def temple_photo() -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg"))


def sample_photo(size) -> Image.Image:
    """scikit-learn's sample photo of a temple (640 x 427) resized to `size`: real photo content at any size."""
    return temple_photo().resize(size, Image.Resampling.BICUBIC)


def jpeg_value(image: Image.Image, **save) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **save)
    return {"bytes": buffer.getvalue(), "path": None}


def seeded(seed, function, *args):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return function(*args)


def test_reduced_decode_draws_timm_s_boxes_and_stays_close_to_the_full_decode():
    """On an 800 x 600 photo cropped to 160 and to 48 px: the same draws as timm's crop on the fully decoded image
    (the same RNG state after), the JPEG decoded at 1/2, 1/4 or 1/8 where the box allows, and the pixels within a
    few grey levels of timm's (identical where it decodes whole)."""
    value = jpeg_value(sample_photo((800, 600)))
    decoded = loaders.decode_image(value)
    reductions, mean_differences = [], []
    for size in (160, 48):
        train, _ = transforms(size)
        timm_crop = train.transforms[0]
        reduced_crop, rest = loaders.split_reduced_decode(train)
        assert [type(op) for op in rest.transforms] == [type(op) for op in train.transforms[1:]]
        for seed in range(12):
            box = seeded(seed, timm_crop.get_params, decoded, timm_crop.scale, timm_crop.ratio)
            reductions.append(loaders.jpeg_reduction((box[3], box[2]), (size, size)))
            ours = seeded(seed, reduced_crop, loaders.open_image(value))
            after_ours = random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()
            theirs = seeded(seed, timm_crop, decoded)
            assert (random.getstate(), np.random.get_state()[1].tolist()) == after_ours[:2]
            assert torch.equal(torch.get_rng_state(), after_ours[2])
            assert ours.mode == "RGB" and ours.size == theirs.size == (size, size)
            difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
            if reductions[-1] == 1:
                assert difference.max() == 0  # decoded whole: timm's crop exactly
            else:
                mean_differences.append(difference.mean())
                assert np.percentile(difference, 99) <= 24, (seed, size, reductions[-1])
    assert {1, 2, 4, 8} <= set(reductions)
    assert np.mean(mean_differences) <= 2.5


@pytest.mark.parametrize(
    "make, save",
    [
        (lambda: sample_photo((640, 480)).convert("L"), {"format": "JPEG", "quality": 90}),
        (lambda: sample_photo((640, 480)).convert("CMYK"), {"format": "JPEG", "quality": 90}),
        (
            lambda: Image.fromarray(np.asarray(sample_photo((60, 40)).convert("L"), np.uint16) * 257),
            {"format": "PNG"},
        ),
        (lambda: sample_photo((60, 40)).convert("P", palette=Image.Palette.ADAPTIVE), {"format": "PNG"}),
        (lambda: sample_photo((60, 40)).convert("RGBA"), {"format": "PNG"}),
    ],
    ids=["grey-jpeg", "cmyk-jpeg", "16-bit-png", "palette-png", "transparent-png"],
)
def test_any_image_mode_takes_the_reduced_decode_path_to_rgb(make, save):
    """Grey, CMYK, 16-bit, palette and transparent images: the crop of decoding whole to RGB (`to_rgb`) and timm's
    crop, exactly for the PNGs; the JPEGs (boxes of 64 px and more for a 32 px crop) decoded at a reduced scale,
    within a few levels; and the whole train transform ends in a uint8 RGB image."""
    image = make()
    buffer = io.BytesIO()
    image.save(buffer, **save)
    value = {"bytes": buffer.getvalue(), "path": None}
    assert Image.open(io.BytesIO(value["bytes"])).mode == image.mode
    train, _ = transforms(32)
    reduced_crop, _ = loaders.split_reduced_decode(train)
    for seed in range(6):
        ours = seeded(seed, reduced_crop, loaders.open_image(value))
        theirs = seeded(seed, train.transforms[0], loaders.decode_image(value))
        assert ours.mode == theirs.mode == "RGB"
        difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
        if save["format"] == "PNG":
            assert difference.max() == 0
        else:
            assert difference.mean() <= 2.5
    example = loaders.ExampleTransform(train, image_column="image", label_column="label")
    batch = example({"image": [value], "label": [0]})
    assert batch["bad_image"] == [None]
    assert batch["pixel_values"][0].dtype == torch.uint8 and batch["pixel_values"][0].shape == (3, 32, 32)


def test_a_truncated_jpeg_is_counted_as_bad_on_the_reduced_decode_path(tmp_path):
    truncated_jpeg(tmp_path / "broken.jpg")
    train, _ = transforms(16)
    example = loaders.ExampleTransform(train, image_column="image", label_column="label")
    batch = example({"image": [{"path": str(tmp_path / "broken.jpg"), "bytes": None}], "label": [1]})
    assert batch["pixel_values"] == [None] and batch["bad_image"] == [str(tmp_path / "broken.jpg")]
    assert loaders.collate([{k: v[0] for k, v in batch.items()}])["pixel_values"].dtype == torch.uint8


def seeded_photo_loader(dataset, *, workers, seed=0):
    sampler = loaders.train_sampler(dataset, num_processes=1, process_index=0, aug_repeats=0, seed=seed)
    loader = loaders.train_loader(dataset, batch_size=4, sampler=sampler, workers=workers, pin_memory=False, seed=seed)
    return sampler, loader


def epoch_batches(sampler, loader, epoch):
    sampler.set_epoch(epoch)
    return [batch["pixel_values"] for batch in loader]


@pytest.fixture(scope="module")
def photo_examples():
    """Eight photo examples through the paper's train transform (RandAugment and all) at 32 px."""
    photos = datasets.Dataset.from_dict(
        {"image": [sample_photo((96 + 8 * i, 64 + 4 * i)) for i in range(8)], "label": list(range(8))}
    ).cast_column("image", datasets.Image())
    train, _ = transforms(32)
    return loaders.prepare_dataset(photos, loaders.ExampleTransform(train, image_column="image", label_column="label"))


def test_an_example_s_augmentation_is_a_function_of_seed_and_its_place_in_the_epoch(photo_examples):
    sampler, loader = seeded_photo_loader(photo_examples, workers=0)
    state = random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()
    first = epoch_batches(sampler, loader, 0)
    assert (random.getstate(), np.random.get_state()[1].tolist()) == state[:2]  # the main process's draws untouched
    assert torch.equal(torch.get_rng_state(), state[2])
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_batches(sampler, loader, 0)))
    second = epoch_batches(sampler, loader, 1)
    assert not any(torch.equal(a, b) for a, b in zip(first, second))
    # Each example read alone with the key of its place (epoch 0, rank 0, position) is the batch's example.
    sampler.set_epoch(0)
    seeded_examples = loaders.SeededExamples(photo_examples, seed=0)
    for position, index in enumerate(list(sampler)[:4]):
        example = seeded_examples[((0, 0, position), index)]
        assert torch.equal(example["pixel_values"], first[0][position])
    _, other_seed = seeded_photo_loader(photo_examples, workers=0, seed=1)
    assert not torch.equal(next(iter(other_seed))["pixel_values"], first[0])


def test_repeated_copies_of_an_image_are_augmented_each_its_own_way(photo_examples):
    """Repeated augmentation deals an image to both ranks (and twice to one): every copy gets its own draws."""
    seeded_examples = loaders.SeededExamples(photo_examples, seed=0)
    copies = {}
    for rank in range(2):
        sampler = loaders.train_sampler(photo_examples, num_processes=2, process_index=rank, aug_repeats=3, seed=0)
        sampler.set_epoch(0)
        for key, index in loaders.DrawSampler(sampler):
            assert key[:2] == (0, rank)
            copies.setdefault(index, []).append(seeded_examples[(key, index)]["pixel_values"])
    assert any(len(images) >= 2 for images in copies.values())
    for images in copies.values():
        assert all(not torch.equal(a, b) for a, b in itertools.combinations(images, 2))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_persistent_workers_draw_what_fresh_workers_and_the_main_process_draw(photo_examples, workers):
    """Workers kept across epochs give, epoch after epoch, the batches that a loader started at that epoch (a
    resumed run) and a loader without workers give."""
    sampler, loader = seeded_photo_loader(photo_examples, workers=workers)
    assert loader.persistent_workers
    in_process_sampler, in_process = seeded_photo_loader(photo_examples, workers=0)
    for epoch in range(3):
        kept = epoch_batches(sampler, loader, epoch)
        resumed_sampler, resumed = seeded_photo_loader(photo_examples, workers=workers)
        fresh = epoch_batches(resumed_sampler, resumed, epoch)
        reference = epoch_batches(in_process_sampler, in_process, epoch)
        assert len(kept) == len(fresh) == len(reference) == 2
        for a, b, c in zip(kept, fresh, reference):
            assert torch.equal(a, b) and torch.equal(a, c)
    workers_before = loader._iterator._workers
    epoch_batches(sampler, loader, 3)
    assert loader._iterator._workers is workers_before  # not restarted
