"""The split to score and its loader: training's data loading and decoding, each model's own preprocessing, and
the dataset's labels mapped to the model's classes."""

import datasets
import torch
from torch.utils.data import DataLoader

from ..training import loaders
from ..training.data import ImageClassificationData, load_image_classification_data, take
from .sources import Classifier


def load_split(
    *, train_dir: str | None, validation_dir: str | None, max_eval_samples: int | None, **loading
) -> ImageClassificationData:
    """The validation split the data flags name (the embedded digits' by default); ValueError on bad input.

    `loading` is the rest of `load_image_classification_data`'s parameters. A lone --validation_dir is read as both
    splits: the loader needs a train split, and only the validation one is scored.
    """
    data = load_image_classification_data(
        train_dir=train_dir or validation_dir, validation_dir=validation_dir, **loading
    )
    if max_eval_samples:
        data.validation = take(data.validation, max_eval_samples)
    check_readable(data.validation, image_column=data.image_column, source=data.source)
    return data


def check_readable(split, *, image_column: str, source: str) -> None:
    """Raise when not one image of the split can be read; stops at the first readable one."""
    count, first_error = 0, None
    for example in split.cast_column(image_column, datasets.Image(decode=False)):
        try:
            loaders.decode_image(example[image_column])
            return
        except loaders.UNREADABLE_IMAGE_ERRORS as error:
            count += 1
            first_error = first_error or f"{loaders.image_description(example[image_column])}: {error}"
    if count == 0:
        raise ValueError(f"the validation split of {source} holds no examples")
    raise ValueError(
        f"none of the {count} images of the validation split of {source} can be read (the first: {first_error}); "
        "allowed: image files PIL can open (JPEG, PNG, ...)"
    )


def label_map(classifier: Classifier, dataset_labels: list[str], *, by_index: bool) -> list[int]:
    """The model's class index of each dataset label: the class of the same name, or with `by_index` the same index."""
    if by_index:
        if len(dataset_labels) > classifier.num_classes:
            raise ValueError(
                f"model {classifier.name!r} has {classifier.num_classes} classes, fewer than the dataset's "
                f"{len(dataset_labels)}: it cannot be scored by index"
            )
        return list(range(len(dataset_labels)))
    if classifier.label_names is None:
        raise ValueError(
            f"model {classifier.name!r} names no labels, so its classes cannot be matched to the dataset's by name; "
            "--ignore_label_names scores class i as the dataset's label i"
        )
    index = {name: i for i, name in enumerate(classifier.label_names)}
    missing = [name for name in dataset_labels if name not in index]
    if missing:
        raise ValueError(
            f"the labels of model {classifier.name!r} are not the dataset's: {_some(missing)} of the dataset are "
            f"not among the model's ({_some(classifier.label_names)}); allowed: a model whose labels include the "
            "dataset's by name, or --ignore_label_names to score class i as the dataset's label i"
        )
    return [index[name] for name in dataset_labels]


def _some(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class ScoringCollate:
    """`loaders.collate`, with the dataset's labels mapped to the model's classes (`label_map`; None keeps them), and
    the placeholders of unreadable images (still labelled -1) given the shape and dtype of the model's input."""

    def __init__(self, *, label_map: list[int] | None, placeholder: torch.Tensor):
        self.label_map = None if label_map is None else torch.tensor(label_map, dtype=torch.long)
        self.placeholder = placeholder

    def __call__(self, examples: list[dict]) -> dict:
        for example in examples:
            if example["bad_image"] is not None:
                example["pixel_values"] = self.placeholder
        batch = loaders.collate(examples)
        if self.label_map is not None:
            labels = batch["labels"]
            batch["labels"] = torch.where(labels >= 0, self.label_map[labels.clamp(min=0)], labels)
        return batch


def scoring_loader(
    data: ImageClassificationData,
    classifier: Classifier,
    *,
    label_map: list[int],
    placeholder: torch.Tensor,
    on_bad_image: str,
    batch_size: int,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """The validation split in order, decoded as training decodes it and preprocessed by the model's transform."""
    transform = loaders.ExampleTransform(
        classifier.transform,
        image_column=data.image_column,
        label_column=data.label_column,
        on_bad_image=on_bad_image,
        placeholder_size=placeholder.shape[-1],
    )
    return DataLoader(
        loaders.prepare_dataset(data.validation, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=ScoringCollate(label_map=label_map, placeholder=placeholder),
        worker_init_fn=loaders.retain_worker_heap,
    )
