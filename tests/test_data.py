import os

import datasets
import numpy as np
import pytest
from image_folders import write_folder
from PIL import Image
from script_runs import TWO_PROCESSES, run_command

from hf_vit_reduction.training.data import (
    check_readable,
    list_dataset_folder,
    list_image_folder,
    load_digits,
    load_image_classification_data,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_embedded_digits_have_a_fixed_split(digits):
    assert (len(digits["train"]), len(digits["validation"])) == (1437, 360)
    assert isinstance(digits["train"].features["image"], datasets.Image)
    assert digits["train"].features["label"].names == [str(d) for d in range(10)]
    assert sorted(set(digits["validation"]["label"])) == list(range(10))
    again = load_digits()
    assert again["validation"]["label"][:50] == digits["validation"]["label"][:50]
    image = digits["train"][0]["image"]
    assert image.size == (8, 8) and image.mode == "L"
    assert np.asarray(image).max() == 255  # 0..16 ink scaled to 0..255


def test_default_source_is_the_embedded_digits():
    data = load_image_classification_data()
    assert (data.image_column, data.label_column) == ("image", "label")
    assert data.label_names == [str(d) for d in range(10)]
    assert len(data.train) + len(data.validation) == 1797


def test_image_folders_load_through_imagefolder(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", per_class=2)
    data = load_image_classification_data(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    assert data.label_names == ["cat", "dog"]
    assert (len(data.train), len(data.validation)) == (6, 4)
    assert data.source.startswith("imagefolder:")


def test_train_folder_alone_holds_out_a_validation_split(tmp_path):
    write_folder(tmp_path / "train", per_class=10)
    data = load_image_classification_data(train_dir=str(tmp_path / "train"), train_val_split=0.25)
    assert (len(data.train), len(data.validation)) == (15, 5)


@pytest.mark.parametrize(
    "setup, kwargs, message",
    [
        (None, {"train_dir": "{tmp}/missing"}, r"train_dir='.*missing' does not exist"),
        ("file", {"train_dir": "{tmp}/file.txt"}, r"train_dir='.*file\.txt' is not a folder"),
        ("empty", {"train_dir": "{tmp}/empty"}, r"train_dir='.*empty' holds no image files"),
        ("train", {"train_dir": "{tmp}/train", "validation_dir": "{tmp}/nope"}, r"validation_dir='.*nope' does not"),
        ("train", {"validation_dir": "{tmp}/train"}, r"needs train_dir"),
        ("train", {"train_dir": "{tmp}/train", "dataset_name": "x"}, r"either dataset_name or train_dir"),
        ("train", {"train_dir": "{tmp}/train", "image_column": "photo"}, r"image_column='photo' is not a column"),
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
        load_image_classification_data(**kwargs)


def save_local_dataset(path, features, rows):
    splits = {name: datasets.Dataset.from_dict(columns, features=features) for name, columns in rows.items()}
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return str(path)


def test_local_dataset_columns_are_detected(tmp_path):
    images = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(4)]
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"train": {"img": images, "fine_label": [0, 1, 0, 1]}, "test": {"img": images, "fine_label": [1] * 4}}
    path = save_local_dataset(tmp_path / "ds", features, rows)
    data = load_image_classification_data(dataset_name=path, validation_split="test")
    assert (data.image_column, data.label_column, data.label_names) == ("img", "fine_label", ["a", "b"])
    with pytest.raises(ValueError, match=r"validation_split='valid' does not exist .* splits: \['train', 'test'\]"):
        load_image_classification_data(dataset_name=path, validation_split="valid")
    with pytest.raises(ValueError, match=r"train_split='training' does not exist"):
        load_image_classification_data(dataset_name=path, train_split="training", validation_split="test")


def test_dataset_without_a_label_column_fails(tmp_path):
    images = [Image.new("RGB", (4, 4)) for _ in range(2)]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    path = save_local_dataset(
        tmp_path / "ds",
        features,
        {"train": {"image": images, "caption": ["a", "b"]}} | {"validation": {"image": images, "caption": ["a", "b"]}},
    )
    with pytest.raises(ValueError, match=r"no label column \(columns: \['image', 'caption'\]\); name it with"):
        load_image_classification_data(dataset_name=path)


@pytest.mark.parametrize("name", ["someone/not-in-the-cache", "./no/such/folder"])
def test_a_source_that_is_neither_local_nor_cached_is_one_line(name):
    with pytest.raises(ValueError) as error:
        load_image_classification_data(dataset_name=name)
    message = str(error.value)
    assert message.startswith(f"dataset_name={name!r} is not a local dataset folder, data files, or a Hub dataset")
    assert "offline mode is on" in message and "\n" not in message


def test_a_folder_of_one_class_says_a_classifier_needs_two(tmp_path):
    write_folder(tmp_path / "one", classes=("cat",), per_class=4)
    with pytest.raises(ValueError) as error:
        load_image_classification_data(train_dir=str(tmp_path / "one"))
    assert str(error.value) == (
        f"a classifier needs at least two classes, but train_dir={str(tmp_path / 'one')!r} (one sub-folder per "
        "class) has 1 (cat)"
    )
    images = [Image.new("RGB", (4, 4)) for _ in range(2)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["only"])})
    path = save_local_dataset(tmp_path / "ds", features, {"train": {"image": images, "label": [0, 0]}})
    with pytest.raises(ValueError, match=r"^a classifier needs at least two classes, but label_column='label' of "):
        load_image_classification_data(dataset_name=path)


def write_unreadable(folder, classes=("cat", "dog"), per_class=2):
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            (folder / name / f"{i}.png").write_bytes(b"not an image")


@pytest.mark.parametrize("broken", ["train", "validation"])
def test_a_split_without_one_readable_image_is_refused(tmp_path, broken):
    write_folder(tmp_path / "train", per_class=3)
    write_folder(tmp_path / "val", per_class=2)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"")  # one bad file among good ones is fine
    data = load_image_classification_data(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    check_readable(data)
    folder = tmp_path / ("train" if broken == "train" else "val")
    for path in folder.rglob("*.png"):
        path.write_bytes(b"not an image")
    data = load_image_classification_data(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    count = 7 if broken == "train" else 4
    with pytest.raises(ValueError, match=rf"^none of the {count} images of the {broken} split of imagefolder:"):
        check_readable(data)


def test_a_folder_is_listed_as_timm_and_imagefolder_list_it(tmp_path):
    """Labels by the name of the folder holding each image (deeper folders too), hidden entries skipped."""
    write_folder(tmp_path / "train", classes=("dog", "cat", "fox"), per_class=2)
    write_folder(tmp_path / "train" / "fox" / "more" / "fox", classes=("deep",), per_class=1)  # labelled 'deep'
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"macOS metadata")
    (tmp_path / "train" / ".cache" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / ".cache" / "cat" / "hidden.png")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    data = load_image_classification_data(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "train"))
    ours = {(row["image"]["path"], data.label_names[row["label"]]) for row in _undecoded(data.validation)}
    from timm.data import ImageDataset

    reader = ImageDataset(str(tmp_path / "train")).reader
    names = {index: name for name, index in reader.class_to_idx.items()}
    timm_listing = {(path, names[label]) for path, label in reader.samples}
    hidden = {
        (str(tmp_path / "train" / "cat" / "._0.png"), "cat"),
        (str(tmp_path / "train" / ".cache" / "cat" / "hidden.png"), "cat"),
    }
    assert ours == timm_listing - hidden  # timm lists hidden files too
    assert len(ours) == 7 and data.label_names == ["cat", "deep", "dog", "fox"]
    assert isinstance(data.validation.features["label"], datasets.ClassLabel)


def _undecoded(split):
    return split.cast_column("image", datasets.Image(decode=False))


def test_the_table_is_the_one_imagefolder_builds(tmp_path):
    write_folder(tmp_path / "train", classes=("b", "a", "c"), per_class=3)
    write_folder(tmp_path / "val", classes=("c", "a"), per_class=2)
    data = load_image_classification_data(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    reference = datasets.load_dataset(
        "imagefolder",
        data_files={"train": str(tmp_path / "train" / "**"), "validation": str(tmp_path / "val" / "**")},
        cache_dir=str(tmp_path / "cache"),
    )
    for ours, theirs in ((data.train, reference["train"]), (data.validation, reference["validation"])):
        assert ours.features == theirs.features
        assert [(r["image"]["path"], r["label"]) for r in _undecoded(ours)] == [
            (r["image"]["path"], r["label"]) for r in _undecoded(theirs)
        ]
    assert data.validation.features["label"].names == ["a", "b", "c"]  # the training classes, not the val folder's


def test_one_folder_as_both_splits_is_walked_once(tmp_path):
    write_folder(tmp_path / "val", per_class=2)
    walked = []

    def list_folder(path, flag):
        walked.append(flag)
        return list_image_folder(path, flag)

    data = load_image_classification_data(
        train_dir=str(tmp_path / "val"), validation_dir=str(tmp_path / "val") + "/", list_folder=list_folder
    )
    assert walked == ["train_dir"] and len(data.train) == len(data.validation) == 4


def test_a_streamed_folder_yields_every_image_once(tmp_path):
    write_folder(tmp_path / "train", per_class=5)
    write_folder(tmp_path / "val", per_class=1)
    data = load_image_classification_data(
        train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"), streaming=True
    )
    assert isinstance(data.train, datasets.IterableDataset) and len(data.validation) == 2
    streamed = sorted((row["image"]["path"], row["label"]) for row in _undecoded(data.train))
    assert streamed == sorted(
        (str(tmp_path / "train" / n / f"{i}.png"), c) for c, n in enumerate(("cat", "dog")) for i in range(5)
    )


def test_class_folders_without_one_image_name_the_folder(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "readme.txt").write_text("no image")
    with pytest.raises(ValueError) as error:
        load_image_classification_data(train_dir=str(tmp_path / "train"))
    assert str(error.value).startswith(f"train_dir={str(tmp_path / 'train')!r} holds no image files (.bmp, .gif, ")
    assert "\n" not in str(error.value)


def test_images_outside_class_folders_are_refused(tmp_path):
    write_folder(tmp_path / "train")
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "stray.png")
    with pytest.raises(ValueError) as error:
        load_image_classification_data(train_dir=str(tmp_path / "train"))
    assert str(error.value) == (
        f"train_dir={str(tmp_path / 'train')!r} holds images outside class folders (stray.png, ...); allowed: "
        "<class>/<image> as in ImageNet's layout"
    )


# Each process of a run lists the folder through `listed_by_main_process`; on any process but the main one, a walk
# of the folder fails.
LIST_ON_TWO_PROCESSES = """
import sys
from accelerate import PartialState
from hf_vit_reduction.training import data

state = PartialState(cpu=True)
if not state.is_main_process:
    def walked(*args, **kwargs):
        raise AssertionError("a process other than the main one walked the folder")
    data.os.scandir = walked
try:
    if sys.argv[2] == "dataset_name":
        listing = data.listed_by_main_process(state, data.list_dataset_folder)(sys.argv[1])["train"]
    else:
        listing = data.listed_by_main_process(state)(sys.argv[1], "train_dir")
    said = f"{listing.paths[-1]}, {len(listing.paths)} images of {listing.class_names}"
except ValueError as error:
    said = f"error: {error}"
# One write per line: the two processes share the pipe, and a line written in two parts can interleave.
sys.stdout.write(f"process {state.process_index}: {said}\\n")
"""


@pytest.mark.slow
def test_two_processes_walk_the_folder_once(tmp_path):
    write_folder(tmp_path / "train", per_class=4)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    driver = tmp_path / "list_folder.py"
    driver.write_text(LIST_ON_TWO_PROCESSES)
    write_folder(tmp_path / "photos" / "train", per_class=4)
    write_folder(tmp_path / "loose", classes=("val",))  # images in their split's folder
    for folder, flag, said in (
        ("train", "train_dir", f"{tmp_path / 'train'}/dog/3.png, 8 images of ['cat', 'dog']"),
        ("empty", "train_dir", "error: train_dir="),
        ("photos", "dataset_name", f"{tmp_path / 'photos'}/train/dog/3.png, 8 images of ['cat', 'dog']"),
        ("loose", "dataset_name", "error: dataset_name="),
    ):
        result = run_command([*TWO_PROCESSES, str(driver), str(tmp_path / folder), flag], timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = sorted(line for line in result.stdout.splitlines() if line.startswith("process "))
        assert [line.split(": ", 1)[0] for line in lines] == ["process 0", "process 1"], result.stdout
        assert lines[0].split(": ", 1)[1] == lines[1].split(": ", 1)[1] and said in lines[0], lines


def _rows(split):
    return [(row["image"]["path"], row["label"]) for row in _undecoded(split)]


@pytest.mark.parametrize(
    "layout",
    [
        {"train": ("cat", "dog", "fox"), "validation": ("dog", "cat", "fox"), "test": ("cat", "dog", "fox")},
        {"train": ("cat", "dog"), "val": ("cat", "dog")},  # 🤗 Datasets' keyword for validation
        {"training-2024": ("cat", "dog"), "dev": ("cat", "dog")},
        {"": ("cat", "dog", "fox")},  # class folders directly: all of it is train
    ],
)
def test_a_local_image_folder_is_split_and_labelled_as_load_dataset_does(tmp_path, layout):
    root = tmp_path / "photos"
    for folder, classes in layout.items():
        write_folder(root / folder, classes=classes, per_class=3 if folder in ("", "train", "training-2024") else 2)
    reference = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    listings = list_dataset_folder(str(root))
    assert list(listings) == list(reference)
    data = load_image_classification_data(dataset_name=str(root))
    assert data.source == f"imagefolder:{root}" and data.label_names == reference["train"].features["label"].names
    if "validation" in reference:
        assert data.train.features == reference["train"].features
        assert _rows(data.train) == _rows(reference["train"])
        assert _rows(data.validation) == _rows(reference["validation"])
    else:  # held out of train, as for any source without a validation split
        assert sorted(_rows(data.train) + _rows(data.validation)) == sorted(_rows(reference["train"]))


def test_a_local_image_folder_is_refused_as_train_dir_would_be(tmp_path):
    root = tmp_path / "photos"
    write_folder(root / "train")
    write_folder(root / "validation", classes=("cat", "owl"), per_class=1)
    with pytest.raises(ValueError) as error:
        load_image_classification_data(dataset_name=str(root))
    assert str(error.value) == (
        f"the validation split of dataset_name={str(root)!r} has classes that the train split of "
        f"dataset_name={str(root)!r} has not: owl; allowed: the training classes"
    )
    loose = tmp_path / "loose"  # imagefolder would label these 'train' and 'validation', the names of their splits
    write_folder(loose, classes=("train", "validation"))
    with pytest.raises(ValueError) as error:
        load_image_classification_data(dataset_name=str(loose))
    assert str(error.value) == (
        f"dataset_name={str(loose)!r} holds images directly in its train split's folder train/ (0.png, ...); "
        "allowed: [<split>/]<class>/<image>, each image labelled by the name of the folder holding it"
    )
    write_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(ValueError, match=r"^a classifier needs at least two classes, but the train split of "):
        load_image_classification_data(dataset_name=str(tmp_path / "one"))


def test_a_streamed_local_image_folder_and_its_unreadable_images(tmp_path):
    root = tmp_path / "photos"
    write_folder(root / "train", per_class=4)
    write_folder(root / "val", per_class=1)
    data = load_image_classification_data(dataset_name=str(root), streaming=True)
    assert isinstance(data.train, datasets.IterableDataset)
    assert sorted(_rows(data.train)) == sorted(
        (str(root / "train" / n / f"{i}.png"), c) for c, n in enumerate(("cat", "dog")) for i in range(4)
    )
    for path in (root / "train").rglob("*.png"):
        path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"^none of the 8 images of the train split of imagefolder:{root}"):
        check_readable(load_image_classification_data(dataset_name=str(root)))


def test_a_folder_of_data_files_or_with_metadata_goes_to_load_dataset(tmp_path):
    tables = tmp_path / "tables"  # Parquet files of images and labels
    tables.mkdir()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(4)]
    for split in ("train", "validation"):
        rows = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1, 1]}, features=features)
        rows.to_parquet(str(tables / f"{split}.parquet"))
    assert list_dataset_folder(str(tables)) is None
    data = load_image_classification_data(dataset_name=str(tables), cache_dir=str(tmp_path / "cache"))
    assert data.source == str(tables) and data.validation["label"] == [0, 1, 1, 1]
    # A metadata.csv's columns replace the folder names in 🤗 Datasets' imagefolder: its labels are the ones used.
    root = tmp_path / "photos"
    write_folder(root / "train", per_class=2)
    write_folder(root / "validation", per_class=2)
    for split in ("train", "validation"):
        (root / split / "metadata.csv").write_text(
            "file_name,label\n" + "".join(f"{c}/{i}.png,{i}\n" for c in ("cat", "dog") for i in range(2))
        )
    assert list_dataset_folder(str(root)) is None
    data = load_image_classification_data(dataset_name=str(root), cache_dir=str(tmp_path / "cache"))
    labels = {
        (os.path.basename(os.path.dirname(path)), os.path.basename(path)): label
        for path, label in _rows(data.validation)
    }
    assert data.source == str(root)
    assert labels == {
        ("cat", "0.png"): 0,
        ("cat", "1.png"): 1,
        ("dog", "0.png"): 0,
        ("dog", "1.png"): 1,
    }  # not by folder


def test_class_names_in_a_metadata_csv_are_encoded_as_datasets_encodes_them(tmp_path):
    root = tmp_path / "photos"  # metadata.csv labels the images by name, across the class folders
    write_folder(root / "train", per_class=3)
    write_folder(root / "validation", per_class=2)
    names = {("cat", 0): "tabby", ("cat", 1): "lynx", ("cat", 2): "tabby", ("dog", 0): "lynx", ("dog", 1): "puma"}
    names |= {("dog", 2): "puma"}
    for split, count in (("train", 3), ("validation", 2)):
        (root / split / "metadata.csv").write_text(
            "file_name,label\n" + "".join(f"{c}/{i}.png,{names[c, i]}\n" for c in ("cat", "dog") for i in range(count))
        )
    data = load_image_classification_data(dataset_name=str(root), cache_dir=str(tmp_path / "cache"))
    # 🤗 Datasets' own reading: the training split's names, sorted, by class_encode_column.
    reference = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "reference"))
    assert data.label_names == reference["train"].class_encode_column("label").features["label"].names
    assert data.label_names == ["lynx", "puma", "tabby"]  # by hand
    by_file = {
        (os.path.basename(os.path.dirname(path)), os.path.basename(path)): data.label_names[label]
        for path, label in _rows(data.validation)
    }
    assert by_file == {(c, f"{i}.png"): names[c, i] for c in ("cat", "dog") for i in range(2)}
    assert sorted(data.train["label"]) == [0, 0, 1, 1, 2, 2]

    (root / "validation" / "metadata.csv").write_text("file_name,label\ncat/0.png,ocelot\ncat/1.png,tabby\n")
    with pytest.raises(ValueError, match=r"the validation split of .* has classes the training split has not: ocelot"):
        load_image_classification_data(dataset_name=str(root), cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(ValueError, match=r"^label_column='label' of .* holds class names as strings"):
        load_image_classification_data(dataset_name=str(root), cache_dir=str(tmp_path / "cache3"), streaming=True)
