"""A run's data: the train and validation splits of a Hub or local dataset, of image folders, or of the embedded
digits, with their image and label columns. Decoding and batching are in `loaders.py`."""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import datasets
import numpy as np
import pyarrow as pa
from accelerate.utils import broadcast_object_list
from datasets.data_files import FILES_TO_IGNORE, NON_WORDS_CHARS, SPLIT_KEYWORDS, _get_data_files_patterns
from datasets.exceptions import DatasetNotFoundError
from datasets.packaged_modules import _EXTENSION_TO_MODULE
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from fsspec.utils import glob_translate
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from PIL import Image

from ..hub.locating import describe_hub_error
from .loaders import UNREADABLE_IMAGE_ERRORS, decode_image, image_description

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DIGITS_VALIDATION_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# A streamed image folder's shards: enough for every process and DataLoader worker to read its own.
FOLDER_STREAM_SHARDS = 1024


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


def add_data_arguments(data) -> None:
    """The data flags (Transformers' example script's names), shared by training, `evaluate` and `predict`."""
    data.add_argument("--dataset_name", default=None, help="Hub id, local dataset folder, e.g. imagenet-1k")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_dir", default=None, help="ImageNet-layout folder: <class>/<image>")
    data.add_argument("--validation_dir", default=None)
    data.add_argument("--train_split", default="train")
    data.add_argument("--validation_split", default="validation")
    data.add_argument("--train_val_split", type=float, default=0.15, help="held out when there is no validation")
    data.add_argument("--image_column", default=None, help="detected when absent")
    data.add_argument("--label_column", default=None, help="detected when absent")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--streaming", action="store_true")
    data.add_argument("--cache_dir", default=None)
    data.add_argument("--on_bad_image", choices=("skip", "error"), default="skip")
    data.add_argument(
        "--workers", "--num_workers", "-j", type=int, default=None, help="recipe, at most the cores per process"
    )
    data.add_argument("--pin_mem", "--pin-mem", action="store_true")


def take(dataset, count: int):
    """The first `count` examples of a split or a stream."""
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(count)
    return dataset.select(range(min(count, len(dataset))))


def check_readable(data: ImageClassificationData) -> None:
    """Raise when not one image of a split can be read: a run would train on nothing, or evaluate nothing.

    Stops at the first readable image, so a healthy split costs one decode; only a wholly broken one is read through.
    """
    for flag, split in (("train", data.train), ("validation", data.validation)):
        encoded = split.cast_column(data.image_column, datasets.Image(decode=False))
        first_error, count = None, 0
        for example in encoded:
            try:
                decode_image(example[data.image_column])
                break
            except UNREADABLE_IMAGE_ERRORS as error:
                count += 1
                first_error = first_error or f"{image_description(example[data.image_column])}: {error}"
        else:
            if count == 0:
                raise ValueError(f"the {flag} split of {data.source} holds no examples")
            raise ValueError(
                f"none of the {count} images of the {flag} split of {data.source} can be read (the first: "
                f"{first_error}); allowed: image files PIL can open (JPEG, PNG, ...)"
            )


def load_digits() -> datasets.DatasetDict:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) with a fixed stratified split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    indices = np.arange(len(pixels))
    train_indices, validation_indices = train_test_split(
        indices, test_size=DIGITS_VALIDATION_FRACTION, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )

    def split(selected):
        images = [Image.fromarray(pixels[i], mode="L") for i in selected]
        return datasets.Dataset.from_dict(
            {"image": images, "label": digits.target[selected].tolist()}, features=features
        )

    return datasets.DatasetDict(train=split(train_indices), validation=split(validation_indices))


@dataclass(frozen=True)
class FolderListing:
    """An image folder as timm's reader lists it: each image's path and the name of the folder holding it (its
    class), classes sorted by name and each class's paths sorted."""

    paths: list[str]
    labels: list[int]  # indices into class_names
    class_names: list[str]


def list_image_folder(path: str, flag: str) -> FolderListing:
    """One `os.scandir` walk of an ImageNet-layout folder (<class>/<image>, deeper folders allowed: the class is the
    folder holding the image, as for timm and 🤗 Datasets' imagefolder). Hidden entries are skipped.

    Nothing is opened or stat-ed beyond the walk itself, so 1.28 M files list in seconds. Raises on a missing path,
    a file, a folder without images, or images outside class folders.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag}={path!r} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{flag}={path!r} is not a folder (expected class sub-folders of images)")
    by_class: dict[str, list[str]] = {}
    loose, folders = [], [path]
    while folders:
        folder = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith((".", "__")):  # .git, .DS_Store, macOS's ._x.jpg and __MACOSX
                    continue
                if entry.is_dir():
                    folders.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    (loose if folder == path else by_class.setdefault(os.path.basename(folder), [])).append(entry.path)
    if loose:
        raise ValueError(
            f"{flag}={path!r} holds images outside class folders ({os.path.basename(min(loose))}, ...); allowed: "
            "<class>/<image> as in ImageNet's layout"
        )
    if not by_class:
        raise ValueError(
            f"{flag}={path!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in its class folders "
            "(expected <class>/<image> as in ImageNet's layout)"
        )
    class_names = sorted(by_class)
    paths, labels = [], []
    for index, name in enumerate(class_names):
        files = sorted(by_class[name])
        paths += files
        labels += [index] * len(files)
    return FolderListing(paths, labels, class_names)


def listed_by_main_process(state, list_folder: Callable = list_image_folder) -> Callable:
    """`list_folder` (`list_image_folder` or `list_dataset_folder`) run on the main process only; the others (on every
    machine) receive its listing or its error, so a run walks each folder once whatever its number of processes."""
    if state.num_processes == 1:
        return list_folder

    def list_on_main_process(*args):
        result = [None]
        if state.is_main_process:
            try:
                result = [list_folder(*args)]
            except (ValueError, FileNotFoundError, NotADirectoryError) as error:
                result = [error]
        broadcast_object_list(result, from_process=0)
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    return list_on_main_process


def _split_folder_name(split: str) -> re.Pattern:
    """A folder name that puts its files into `split` under 🤗 Datasets' default patterns (`train`, `val_2024`, ...)."""
    keywords = "|".join(map(re.escape, SPLIT_KEYWORDS.get(split, [split])))
    return re.compile(rf"(?:.*[{NON_WORDS_CHARS}])?(?:{keywords})(?:[{NON_WORDS_CHARS}].*)?")


def list_dataset_folder(path: str) -> dict[str, FolderListing] | None:
    """A local folder given as dataset_name, split and labelled as `load_dataset(path)` does for a folder of images
    (🤗 Datasets' own split patterns, `train/`, `validation/`, `val/`, `test/`, ..., everything in train when none
    matches; the class is the folder holding the image), from one `os.scandir` walk instead of a glob, stat and
    fingerprint per file.

    None when `load_dataset` would read the folder otherwise: data files that are not images (Parquet, Arrow, CSV,
    ...), archives, a dataset card or `.huggingface.yaml` that may configure its files, or a `metadata.csv`/`.jsonl`/
    `.parquet`, whose columns 🤗 Datasets' imagefolder uses instead of the folder names.
    """
    readme = os.path.join(path, "README.md")
    if os.path.exists(os.path.join(path, ".huggingface.yaml")):
        return None
    if os.path.isfile(readme):
        with open(readme, encoding="utf-8", errors="replace") as card:
            if card.readline().strip() == "---":  # a YAML header may configure the data files
                return None
    files: dict[str, list[str]] = {}  # folder -> its files, paths relative to `path`
    folders = [""]
    while folders:  # hidden and __special__ entries are skipped, as 🤗 Datasets' default patterns skip them
        folder = folders.pop()
        with os.scandir(os.path.join(path, folder)) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                relative = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir():
                    if not entry.name.startswith("__"):
                        folders.append(relative)
                elif entry.name not in FILES_TO_IGNORE:
                    files.setdefault(folder, []).append(relative)
    all_files = "\n".join(file for in_folder in files.values() for file in in_folder)

    def matching(pattern: str, first_only: bool = False) -> list[str]:
        # A glob's literal parts (slashes next to ** may be elided) are in every path it matches: a cheap filter first.
        literals = [part.strip("/") for part in re.split(r"\*+|\?|\[[^\]]*\]", pattern) if part.strip("/")]
        if not all(literal in all_files for literal in literals):
            return []
        glob, found = re.compile(glob_translate(pattern)), []
        for in_folder in files.values():
            if pattern.endswith("/**"):  # a folder's path alone decides: one of its files tells for all
                found += in_folder if glob.match(in_folder[0]) else []
            else:
                found += [file for file in in_folder if glob.match(file)]
            if first_only and found:
                return found[:1]
        return found

    try:
        split_patterns = _get_data_files_patterns(lambda pattern: matching(pattern, first_only=True))
    except FileNotFoundError:
        return None
    split_files = {}
    for split, patterns in split_patterns.items():
        matched = dict.fromkeys(file for pattern in patterns for file in matching(pattern))
        suffixes = {f".{suffix.lower()}" for file in matched for suffix in file.rpartition("/")[2].split(".")[1:]}
        # Images only: load_dataset reads them with imagefolder. Any other data file (a metadata.csv, whose columns
        # imagefolder takes instead of the folder names; an archive; a .txt) leaves the folder to load_dataset.
        data_files = {suffix for suffix in suffixes if suffix in _EXTENSION_TO_MODULE or suffix == ".zip"}
        if not data_files or any(_EXTENSION_TO_MODULE.get(suffix, ("",))[0] != "imagefolder" for suffix in data_files):
            return None
        split_files[split] = [f for f in matched if os.path.splitext(f)[1].lower() in ImageFolder.EXTENSIONS]
    listings, prefix = {}, os.path.join(path, "")
    for split, images in split_files.items():
        in_split_folder, checked = _split_folder_name(split), set()
        by_class: dict[str, list[str]] = {}
        for image in images:
            folder, _, name = image.rpartition("/")
            class_name = folder.rpartition("/")[2]
            if folder not in checked:
                if not folder or in_split_folder.fullmatch(class_name):
                    where = f"directly in its {split} split's folder {folder}/" if folder else "outside class folders"
                    raise ValueError(
                        f"dataset_name={path!r} holds images {where} ({name}, ...); allowed: "
                        "[<split>/]<class>/<image>, each image labelled by the name of the folder holding it"
                    )
                checked.add(folder)
            by_class.setdefault(class_name, []).append(prefix + image)
        class_names = sorted(by_class)
        paths, labels = [], []
        for index, name in enumerate(class_names):
            paths += sorted(by_class[name])
            labels += [index] * len(by_class[name])
        listings[split] = FolderListing(paths, labels, class_names)
    return listings


def folder_split(listing: FolderListing, class_names: list[str]) -> datasets.Dataset:
    """The 🤗 Datasets table of a listing (image paths, labels by name among `class_names`), as imagefolder builds it
    but without a glob, stat or fingerprint per file, and built in Arrow at once rather than example by example."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    position = {name: i for i, name in enumerate(class_names)}
    labels = np.array([position[name] for name in listing.class_names], dtype=np.int64)[listing.labels]
    images = pa.StructArray.from_arrays(  # the Image feature's storage: no bytes, the file's path
        [pa.nulls(len(listing.paths), pa.binary()), pa.array(listing.paths, pa.string())], names=["bytes", "path"]
    )
    table = pa.Table.from_arrays([images, pa.array(labels)], schema=features.arrow_schema)
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=features))


def _folder_splits(
    listings: dict[str, FolderListing],
    train_split: str,
    validation_split: str,
    *,
    train_where: str,
    validation_where: str,
) -> dict[str, datasets.Dataset]:
    """The train split's table and, when listed, the validation split's, both labelled by the training classes."""
    classes = listings[train_split].class_names
    if len(classes) < 2:
        raise _too_few_classes(classes, f"{train_where} (one sub-folder per class)")
    splits = {train_split: folder_split(listings[train_split], classes)}
    if validation_split in listings:
        # A class only validation has is never trained on, and would count against the model as an error.
        if extra := sorted(set(listings[validation_split].class_names) - set(classes)):
            raise ValueError(
                f"{validation_where} has classes that {train_where} has not: "
                f"{', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}; allowed: the training classes"
            )
        splits[validation_split] = folder_split(listings[validation_split], classes)
    return splits


def _too_few_classes(names: list[str], where: str) -> ValueError:
    return ValueError(
        f"a classifier needs at least two classes, but {where} has {len(names)}"
        + (f" ({', '.join(names[:10])})" if names else "")
    )


def _split_names(dataset_name: str, config_name: str | None, cache_dir: str | None) -> list[str]:
    """The splits of a Hub id or of data files; a source that cannot be found is a one-line ValueError."""
    try:
        return datasets.get_dataset_split_names(dataset_name, config_name, cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError) as error:
        problem = _hub_refusal(dataset_name) if isinstance(error, DatasetNotFoundError) else None
        if problem is not None:
            raise ValueError(f"--dataset_name {problem}") from None
        where = "a local dataset folder, data files, or a Hub dataset"
        if datasets.config.HF_HUB_OFFLINE:
            where += " in the local 🤗 Datasets cache (offline mode is on)"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"dataset_name={dataset_name!r} is not {where}: {reason}") from None


def _hub_refusal(dataset_name: str) -> str | None:
    """Why the Hub refuses the dataset `dataset_name` (gated, absent, or private), in the words used for a model; None
    offline, for a name that is no Hub id, or when the Hub serves it. 🤗 Datasets drops the Hub's error and names
    huggingface.co whatever the endpoint, so the Hub is asked again."""
    if datasets.config.HF_HUB_OFFLINE:
        return None
    try:
        HfApi().dataset_info(dataset_name)
    except RepositoryNotFoundError as error:  # a GatedRepoError too
        return describe_hub_error(error, repo_id=dataset_name, revision=None, token=None, repo_type="dataset")
    except (HFValidationError, HfHubHTTPError, OSError):
        pass  # no Hub id, or another answer: 🤗 Datasets' own message stands
    return None


def _detect_column(dataset, wanted: str | None, feature_type, fallbacks: tuple[str, ...], what: str, flag: str):
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


def _class_encoded(train, validation, label_column: str, source: str, *, streaming: bool):
    """Labels given as class names (e.g. a metadata.csv's `label` column) encoded as 🤗 Datasets encodes them: the
    training split's names, sorted (`class_encode_column`), and the validation split cast to the same ClassLabel."""
    if streaming:
        raise ValueError(
            f"label_column={label_column!r} of {source} holds class names as strings, whose full list a stream "
            "cannot give before training; allowed: a dataset without --streaming, or integer or ClassLabel labels"
        )
    train = train.class_encode_column(label_column)
    names = train.features[label_column].names
    unknown = sorted(set(validation[label_column]) - set(names))
    if unknown:
        raise ValueError(
            f"the validation split of {source} has classes the training split has not: {', '.join(unknown[:10])}; "
            "allowed: the training classes"
        )
    return train, validation.cast_column(label_column, train.features[label_column])


def load_image_classification_data(
    *,
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
    list_folder: Callable[[str, str], FolderListing] = list_image_folder,
    list_dataset_folder: Callable[[str], dict[str, FolderListing] | None] = list_dataset_folder,
) -> ImageClassificationData:
    """Load the splits of a Hub/local dataset, of image folders, or (with no source) the embedded digits.

    An image folder is listed by `list_folder(path, flag)`, a local folder of images given as dataset_name by
    `list_dataset_folder(path)` (each through `listed_by_main_process` in a run of several processes).
    Every problem a run could only discover later (missing path, empty folder, unknown split, no label column)
    is raised here, before any model is built.
    """
    if dataset_name and (train_dir or validation_dir):
        raise ValueError("give either dataset_name or train_dir/validation_dir, not both")
    if validation_dir and not train_dir:
        raise ValueError(f"validation_dir={validation_dir!r} needs train_dir as well")
    if train_dir:
        train_listing = list_folder(train_dir, "train_dir")
        validation_listing = None
        if validation_dir:
            same = os.path.realpath(validation_dir) == os.path.realpath(train_dir)  # as `evaluate` passes a lone one
            validation_listing = train_listing if same else list_folder(validation_dir, "validation_dir")
        splits = _folder_splits(
            {train_split: train_listing} | ({validation_split: validation_listing} if validation_listing else {}),
            train_split,
            validation_split,
            train_where=f"train_dir={train_dir!r}",
            validation_where=f"validation_dir={validation_dir!r}",
        )
        builder, source, available = None, f"imagefolder:{train_dir}", list(splits)
    elif (
        dataset_name
        and not dataset_config_name
        and os.path.isdir(dataset_name)
        and not os.path.isfile(os.path.join(dataset_name, "dataset_dict.json"))
        and (listings := list_dataset_folder(dataset_name)) is not None
    ):
        builder, source, available = None, f"imagefolder:{dataset_name}", list(listings)
        splits = {}
        if train_split in listings:
            where = f"dataset_name={dataset_name!r}"
            splits = _folder_splits(
                listings,
                train_split,
                validation_split,
                train_where=f"the {train_split} split of {where}",
                validation_where=f"the {validation_split} split of {where}",
            )
    elif dataset_name and os.path.isfile(os.path.join(dataset_name, "dataset_dict.json")):
        builder, source = None, dataset_name
        splits = datasets.load_from_disk(dataset_name)
        available = list(splits)
    elif dataset_name:
        builder, builder_kwargs, source = (dataset_name, {"name": dataset_config_name}, dataset_name)
        available = _split_names(dataset_name, dataset_config_name, cache_dir)
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
            return datasets.load_dataset(builder, split=split, cache_dir=cache_dir, streaming=stream, **builder_kwargs)

        # Streaming applies to the (large) train split; evaluation needs a sized split to count every example once.
        train = load(train_split, streaming)
        validation = load(validation_split) if has_validation else None
    else:
        if streaming and not source.startswith("imagefolder:"):
            raise ValueError(f"streaming=True needs a Hub dataset, files or an image folder, not {source}")
        train = splits[train_split]
        if streaming:  # read in order by shards, shuffled through a buffer (`loaders.shard_stream`)
            train = train.to_iterable_dataset(num_shards=min(len(train), FOLDER_STREAM_SHARDS))
        validation = splits[validation_split] if has_validation else None
    if validation is None:
        # Like Transformers' example script: hold out part of train when the source has no validation split.
        held_out = train.train_test_split(test_size=train_val_split, seed=seed)
        train, validation = held_out["train"], held_out["test"]

    image_column = _detect_column(
        validation, image_column, datasets.Image, ("image", "img", "pixel_values"), "image", "image_column"
    )
    label_column = _detect_column(
        validation, label_column, datasets.ClassLabel, ("label", "labels", "target"), "label", "label_column"
    )
    label_feature = validation.features[label_column]
    if isinstance(label_feature, datasets.Value) and label_feature.dtype in ("string", "large_string"):
        train, validation = _class_encoded(train, validation, label_column, source, streaming=streaming)
        label_feature = validation.features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        label_names = list(label_feature.names)
    else:
        label_names = [str(i) for i in range(int(max(validation[label_column])) + 1)]
    if len(label_names) < 2:
        raise _too_few_classes(label_names, f"label_column={label_column!r} of {source}")
    return ImageClassificationData(train, validation, image_column, label_column, label_names, source)
