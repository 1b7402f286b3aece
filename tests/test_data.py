import io
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_vit_reduction import data as D


@pytest.fixture(scope="module")
def digits():
    return D.load_digits()


def test_embedded_digits_have_a_fixed_split(digits):
    assert (len(digits["train"]), len(digits["validation"])) == (1437, 360)
    assert isinstance(digits["train"].features["image"], datasets.Image)
    assert digits["train"].features["label"].names == [str(d) for d in range(10)]
    assert sorted(set(digits["validation"]["label"])) == list(range(10))
    again = D.load_digits()
    assert again["validation"]["label"][:50] == digits["validation"]["label"][:50]
    image = digits["train"][0]["image"]
    assert image.size == (8, 8) and image.mode == "L"
    assert np.asarray(image).max() == 255  # 0..16 ink scaled to 0..255


def test_default_source_is_the_embedded_digits():
    data = D.load_image_classification_data()
    assert (data.image_column, data.label_column) == ("image", "label")
    assert data.label_names == [str(d) for d in range(10)]
    assert len(data.train) + len(data.validation) == 1797


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
    image = D.to_rgb(Image.new(mode, (2, 2), value))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == expected


def test_palette_with_transparency_becomes_rgb():
    image = Image.new("P", (2, 2), 0)
    image.putpalette([200, 10, 10] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    assert D.to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    del image.info["transparency"]
    assert D.to_rgb(image).getpixel((0, 0)) == (200, 10, 10)


def write_folder(root, classes=("cat", "dog"), per_class=3, size=12):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (40 * c, 10 * i, 0)).save(root / name / f"{i}.png")
    return root


def truncated_jpeg(path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_image_folders_load_through_imagefolder(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", per_class=2)
    data = D.load_image_classification_data(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    assert data.label_names == ["cat", "dog"]
    assert (len(data.train), len(data.validation)) == (6, 4)
    assert data.source.startswith("imagefolder:")


def test_train_folder_alone_holds_out_a_validation_split(tmp_path):
    write_folder(tmp_path / "train", per_class=10)
    data = D.load_image_classification_data(train_dir=str(tmp_path / "train"), train_val_split=0.25)
    assert (len(data.train), len(data.validation)) == (15, 5)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    write_folder(tmp_path / "train")
    truncated_jpeg(tmp_path / "train" / "cat" / "broken.jpg")
    (tmp_path / "train" / "dog" / "empty.png").write_bytes(b"")
    data = D.load_image_classification_data(train_dir=str(tmp_path / "train"), train_val_split=0.01)
    split = datasets.concatenate_datasets([data.train, data.validation])
    train_transform, eval_transform = D.build_transforms(16, (0.5,) * 3, (0.5,) * 3)
    skip = D.prepare_dataset(split, D.ExampleTransform(train_transform, "image", "label"))
    batch = D.collate([skip[i] for i in range(len(skip))])
    assert batch["pixel_values"].shape == (6, 3, 16, 16)
    assert len(batch["labels"]) == 6
    assert sorted(p.rsplit("/", 1)[-1] for p in batch["bad_images"]) == [
        "broken.jpg",
        "empty.png",
    ]

    placeholder = D.prepare_dataset(split, D.ExampleTransform(eval_transform, "image", "label", "skip", 16))
    batch = D.collate([placeholder[i] for i in range(len(placeholder))])
    assert batch["pixel_values"].shape == (8, 3, 16, 16)
    assert (batch["labels"] == -1).sum() == 2

    strict = D.prepare_dataset(split, D.ExampleTransform(eval_transform, "image", "label", "error"))
    with pytest.raises(ValueError, match=r"cannot read image .*(broken\.jpg|empty\.png)"):
        [strict[i] for i in range(len(strict))]


@pytest.mark.parametrize(
    "setup, kwargs, message",
    [
        (None, {"train_dir": "{tmp}/missing"}, r"train_dir='.*missing' does not exist"),
        (
            "file",
            {"train_dir": "{tmp}/file.txt"},
            r"train_dir='.*file\.txt' is not a folder",
        ),
        (
            "empty",
            {"train_dir": "{tmp}/empty"},
            r"train_dir='.*empty' holds no image files",
        ),
        (
            "train",
            {"train_dir": "{tmp}/train", "validation_dir": "{tmp}/nope"},
            r"validation_dir='.*nope' does not",
        ),
        ("train", {"validation_dir": "{tmp}/train"}, r"needs train_dir"),
        (
            "train",
            {"train_dir": "{tmp}/train", "dataset_name": "x"},
            r"either dataset_name or train_dir",
        ),
        (
            "train",
            {"train_dir": "{tmp}/train", "image_column": "photo"},
            r"image_column='photo' is not a column",
        ),
    ],
)
def test_bad_sources_fail_before_training(tmp_path, setup, kwargs, message):
    if setup == "file":
        (tmp_path / "file.txt").write_text("x")
    elif setup == "empty":
        (tmp_path / "empty" / "cat").mkdir(parents=True)
        (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images")
    elif setup == "train":
        write_folder(tmp_path / "train")
    kwargs = {k: v.format(tmp=tmp_path) for k, v in kwargs.items()}
    with pytest.raises((ValueError, FileNotFoundError, NotADirectoryError), match=message):
        D.load_image_classification_data(**kwargs)


def save_local_dataset(path, features, rows):
    splits = {name: datasets.Dataset.from_dict(columns, features=features) for name, columns in rows.items()}
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return str(path)


def test_local_dataset_columns_are_detected(tmp_path):
    images = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(4)]
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["a", "b"])})
    rows = {
        "train": {"img": images, "fine_label": [0, 1, 0, 1]},
        "test": {"img": images, "fine_label": [1] * 4},
    }
    path = save_local_dataset(tmp_path / "ds", features, rows)
    data = D.load_image_classification_data(dataset_name=path, validation_split="test")
    assert (data.image_column, data.label_column, data.label_names) == (
        "img",
        "fine_label",
        ["a", "b"],
    )
    with pytest.raises(
        ValueError,
        match=r"validation_split='valid' does not exist .* splits: \['train', 'test'\]",
    ):
        D.load_image_classification_data(dataset_name=path, validation_split="valid")
    with pytest.raises(ValueError, match=r"train_split='training' does not exist"):
        D.load_image_classification_data(dataset_name=path, train_split="training", validation_split="test")


def test_dataset_without_a_label_column_fails(tmp_path):
    images = [Image.new("RGB", (4, 4)) for _ in range(2)]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    path = save_local_dataset(
        tmp_path / "ds",
        features,
        {"train": {"image": images, "caption": ["a", "b"]}} | {"validation": {"image": images, "caption": ["a", "b"]}},
    )
    with pytest.raises(
        ValueError,
        match=r"no label column \(columns: \['image', 'caption'\]\); name it with",
    ):
        D.load_image_classification_data(dataset_name=path)


def test_repeated_augmentation_partitions_across_two_ranks():
    dataset = list(range(512))
    ranks = [D.train_sampler(dataset, 2, rank, aug_repeats=3, seed=0) for rank in range(2)]
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
    sampler = D.train_sampler(list(range(100)), 1, 0, aug_repeats=3, seed=5)
    sampler.set_epoch(3)
    order = list(sampler)
    assert sorted(order) == list(range(100))
    again = D.train_sampler(list(range(100)), 1, 0, aug_repeats=3, seed=5)
    again.set_epoch(3)
    assert list(again) == order


def test_transforms_follow_timm_recipe():
    train, evaluation = D.build_transforms(32, (0.5,) * 3, (0.5,) * 3, reprob=0.25)
    names = [type(t).__name__ for t in train.transforms]
    assert names[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    assert "RandAugment" in names and names[-1] == "RandomErasing"
    out = evaluation(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert out.shape == (3, 32, 32) and torch.allclose(out, torch.ones_like(out))


def test_streaming_reads_train_as_a_stream_sharded_across_processes(tmp_path):
    write_folder(tmp_path / "ds" / "train", per_class=8)
    write_folder(tmp_path / "ds" / "validation", per_class=2)
    data = D.load_image_classification_data(dataset_name=str(tmp_path / "ds"), streaming=True)
    assert isinstance(data.train, datasets.IterableDataset)
    assert isinstance(data.validation, datasets.Dataset) and len(data.validation) == 4
    train_transform, _ = D.build_transforms(16, (0.5,) * 3, (0.5,) * 3)
    stream = D.prepare_dataset(data.train, D.ExampleTransform(train_transform, "image", "label"))
    parts = [D.shard_stream(stream, 2, rank, seed=0) for rank in range(2)]
    assert D.train_sampler(parts[0], 2, 0, aug_repeats=3, seed=0) is None
    colors = [[tuple(e["pixel_values"][:, 0, 0].tolist()) + (e["labels"],) for e in part] for part in parts]
    assert len(colors[0]) + len(colors[1]) == 16
    with pytest.raises(ValueError, match=r"validation_split='dev' does not exist"):
        D.load_image_classification_data(dataset_name=str(tmp_path / "ds"), streaming=True, validation_split="dev")


def collate_and_report_sharing(examples):
    batch = D.collate(examples)
    return batch, batch["pixel_values"].is_shared()


def test_workers_collate_straight_into_shared_memory(digits):
    """A batch built in a worker is already shared: sending it costs no extra copy of the pixels."""
    _, eval_transform = D.build_transforms(16, (0.5,) * 3, (0.5,) * 3)
    dataset = D.prepare_dataset(digits["train"], D.ExampleTransform(eval_transform, "image", "label"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collate_and_report_sharing)
    batch, shared_in_worker = next(iter(loader))
    assert shared_in_worker
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert not D.collate([dataset[0]])["pixel_values"].is_shared()  # main process


def test_loaders_keep_their_workers_heap(digits):
    dataset = D.in_memory(digits["validation"].select(range(4)))
    sampler = D.train_sampler(dataset, 1, 0, aug_repeats=0, seed=0)
    loaders = [
        D.train_loader(dataset, 2, sampler, workers=1, pin_memory=False, seed=0),
        D.eval_loader(dataset, 2, workers=1, pin_memory=False),
    ]
    assert all(loader.worker_init_fn is D.retain_worker_heap for loader in loaders)


HEAP_PROBE = """
import ctypes, sys
from hf_vit_reduction.data import retain_worker_heap
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


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("default", "False False"),  # glibc mmaps a 20 MB block and unmaps it on free
        ("retain", "True False"),  # from the heap, and the heap keeps it after free
    ],
)
def test_retain_worker_heap_serves_big_blocks_from_a_kept_heap(mode, expected):
    result = subprocess.run(
        [sys.executable, "-c", HEAP_PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split("\n")[0] == expected
