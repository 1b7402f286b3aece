"""Calibration for a post-hoc reduction: a few training images, and what each MLP hidden unit does on them.

A hidden unit's activation is the input of `fc2` (after `fc1` and the activation function), seen by a forward
pre-hook on every block's `mlp.fc2`, so any activation function works. The model runs in eval mode (no stochastic
depth), in batches, on the images exactly as its saved image processor gives them.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from ..image_processing_vit_reduced import Preprocessing

DEFAULT_CALIBRATION_SAMPLES = 256


@dataclass
class Calibration:
    """Calibration images, transformed for the model, with their labels (which `taylor` needs)."""

    pixel_values: torch.Tensor  # (n, channels, height, width)
    labels: torch.Tensor  # (n,)
    source: str = ""
    batch_size: int = 64

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            yield self.pixel_values[start : start + self.batch_size], self.labels[start : start + self.batch_size]


def evaluation_transform(preprocessing: Preprocessing):
    """timm's evaluation transform for `preprocessing`, every field of it (to normalized float tensors)."""
    from timm.data.transforms_factory import create_transform

    return create_transform(
        input_size=preprocessing.image_size,
        is_training=False,
        crop_pct=preprocessing.crop_pct,
        crop_mode=preprocessing.crop_mode,
        interpolation=preprocessing.interpolation,
        mean=preprocessing.mean,
        std=preprocessing.std,
    )


def load_calibration(*, samples: int, seed: int, preprocessing: Preprocessing, **loading) -> Calibration:
    """`samples` images of the training split, drawn without replacement by a generator seeded with `seed`.

    `loading` takes `load_image_classification_data`'s source arguments (`dataset_name`, `train_dir`, ...; none
    gives the embedded digits). The images are transformed as the model's saved image processor does
    (`preprocessing`, read from it with `preprocessing_of`). A source with fewer training images than asked is
    refused: calibrating on fewer images than the user asked for would silently change what the ranking means.
    """
    from ..training.data import load_image_classification_data
    from ..training.loaders import ExampleTransform, prepare_dataset

    if samples < 1:
        raise ValueError(f"--calibration_samples {samples} is not valid; allowed: an integer >= 1")
    data = load_image_classification_data(seed=seed, **loading)
    train = data.train
    if isinstance(train, datasets.IterableDataset):
        train = datasets.Dataset.from_list(list(train.shuffle(seed=seed, buffer_size=10 * samples).take(samples)))
        chosen = train
    else:
        chosen = None
    if len(train) < samples:
        raise ValueError(
            f"--calibration_samples {samples} is more than the {len(train)} training images of {data.source}; "
            f"allowed: at most {len(train)}"
        )
    if chosen is None:
        order = np.random.default_rng(seed).permutation(len(train))[:samples]
        chosen = train.select(order.tolist())
    transform = evaluation_transform(preprocessing)
    columns = {"image_column": data.image_column, "label_column": data.label_column, "on_bad_image": "error"}
    prepared = prepare_dataset(chosen, ExampleTransform(transform, **columns))[:]
    return Calibration(
        pixel_values=torch.stack(prepared["pixel_values"]),
        labels=torch.tensor([int(label) for label in prepared["labels"]]),
        source=data.source,
    )


@contextmanager
def _recorded_hidden_activations(encoder) -> Iterator[list]:
    """A list that each forward fills with every block's MLP hidden activations (batch, tokens, units)."""
    recorded = [None] * len(encoder.layers)
    handles = []
    for index, layer in enumerate(encoder.layers):

        def record(module, args, index=index):
            recorded[index] = args[0]

        handles.append(layer.mlp.fc2.register_forward_pre_hook(record))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _eval_mode(model):
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _encoder(model):
    return model.vit if hasattr(model, "vit") else model


def _parameter(model) -> torch.Tensor:
    return next(model.parameters())


@torch.no_grad()
def activation_importance(model, calibration: Calibration) -> list[torch.Tensor]:
    """Per block, each hidden unit's mean |activation| over the calibration images and their tokens."""
    encoder, weight = _encoder(model), _parameter(model)
    totals, count = None, 0
    with _eval_mode(model), _recorded_hidden_activations(encoder) as recorded:
        for pixels, _ in calibration.batches():
            encoder(pixels.to(weight))
            sums = [activation.float().abs().sum(dim=(0, 1)) for activation in recorded]
            totals = sums if totals is None else [t + s for t, s in zip(totals, sums)]
            count += recorded[0].shape[0] * recorded[0].shape[1]
    return [total / count for total in totals]


def taylor_importance(model, calibration: Calibration) -> list[torch.Tensor]:
    """Per block, each hidden unit's first-order estimate of the loss change when it is removed:
    |sum over tokens of activation x d(loss)/d(activation)| per image, summed over the calibration images.

    The loss is the cross-entropy of the labels summed over the batch, so an image's term does not depend on the
    batch it falls in. The gradients are taken with `torch.autograd.grad`: no parameter's `.grad` is touched.
    """
    if not hasattr(model, "classifier"):
        raise ValueError("prune_method='taylor' needs a classifier (a loss on the labels); the model has none")
    encoder, weight = _encoder(model), _parameter(model)
    totals = None
    with _eval_mode(model), _recorded_hidden_activations(encoder) as recorded, torch.enable_grad():
        for pixels, labels in calibration.batches():
            logits = model(pixels.to(weight)).logits
            loss = F.cross_entropy(logits.float(), labels.to(logits.device), reduction="sum")
            gradients = torch.autograd.grad(loss, recorded)
            scores = [
                (activation.detach() * gradient).float().sum(dim=1).abs().sum(dim=0)
                for activation, gradient in zip(recorded, gradients)
            ]
            totals = scores if totals is None else [t + s for t, s in zip(totals, scores)]
    return totals


class UnitCorrelation:
    """Pearson correlation between the hidden units of two MLPs, accumulated over batches in float64.

    `update(leader, member)` takes activations of shape (..., units), one row per token; `correlation()` gives the
    (leader units x member units) matrix. A unit that never varies correlates 0 with everything.
    """

    def __init__(self):
        self.count = 0
        self.sums = None

    def update(self, leader: torch.Tensor, member: torch.Tensor) -> None:
        a = leader.reshape(-1, leader.shape[-1]).double()
        b = member.reshape(-1, member.shape[-1]).double()
        sums = (a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), a.T @ b)
        self.sums = sums if self.sums is None else tuple(s + t for s, t in zip(self.sums, sums))
        self.count += a.shape[0]

    def correlation(self) -> torch.Tensor:
        sum_a, sum_b, square_a, square_b, cross = self.sums
        n = self.count
        covariance = cross / n - torch.outer(sum_a / n, sum_b / n)
        std_a = (square_a / n - (sum_a / n) ** 2).clamp_min(0).sqrt()
        std_b = (square_b / n - (sum_b / n) ** 2).clamp_min(0).sqrt()
        return torch.nan_to_num(covariance / torch.outer(std_a, std_b), nan=0.0, posinf=0.0, neginf=0.0)


@torch.no_grad()
def group_correlations(
    model, calibration: Calibration, groups: list[list[int]]
) -> dict[tuple[int, int], torch.Tensor]:
    """For each group (block indices, leader first), the unit correlation of the leader's MLP with each member's,
    each MLP fed what its own block feeds it in `model`: {(leader, member): (units x units)}."""
    encoder, weight = _encoder(model), _parameter(model)
    pairs = {(group[0], member): UnitCorrelation() for group in groups for member in group[1:]}
    with _eval_mode(model), _recorded_hidden_activations(encoder) as recorded:
        for pixels, _ in calibration.batches():
            encoder(pixels.to(weight))
            for (leader, member), correlation in pairs.items():
                correlation.update(recorded[leader], recorded[member])
    return {pair: correlation.correlation() for pair, correlation in pairs.items()}
