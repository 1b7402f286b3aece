"""A pretrained classifier's labels matched to the data's by name.

A model (student or teacher) whose labels are the data's in another order gets its classifier rows permuted to the
data's order, so that it predicts what it did. A model saved without label names (Transformers' placeholders
`LABEL_0`, `LABEL_1`, ..., what `save_pretrained` writes when none were given) with exactly the data's number of
classes is matched by index: its class i is the data's label i. Real names that are not the data's are refused in
one line, unless a new classifier is asked for (Transformers' `ignore_mismatched_sizes`), which only a student can
have.
"""

from dataclasses import dataclass

import torch
from torch import nn

# What `match_labels` did to the model's classifier.
SAME, PERMUTED, BY_INDEX, NEW_HEAD = "same", "permuted", "by index", "new head"


@dataclass(frozen=True)
class LabelMatch:
    outcome: str  # SAME, PERMUTED, BY_INDEX or NEW_HEAD
    model_labels: list[str]  # the model's labels, in its own order, before the match

    def sentence(self) -> str:
        """What was done, in one line for the run's log."""
        if self.outcome == NEW_HEAD:
            return f"it predicts {shorten(self.model_labels)}: a new classifier for the data's labels (--ignore_mismatched_sizes)"
        if self.outcome == PERMUTED:
            return "the data's labels in another order: its classifier rows were reordered"
        if self.outcome == BY_INDEX:
            return (
                f"no label names ({shorten(self.model_labels)}, Transformers' placeholders): its classes are the "
                "data's labels by index"
            )
        return "the data's labels"

    def describe(self) -> dict:
        """What the provenance records: the model's labels when they were not the data's, and what was done."""
        if self.outcome == SAME:
            return {"labels": SAME}
        return {"labels": self.outcome, "model_labels": self.model_labels}


def model_labels(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)] if config.num_labels else []


def placeholder_labels(count: int) -> list[str]:
    """What Transformers' configs name `count` classes when no names were given."""
    return [f"LABEL_{i}" for i in range(count)]


def shorten(labels: list[str], limit: int = 6) -> str:
    shown = ", ".join(map(str, labels[:limit]))
    return f"[{shown}{', ...' if len(labels) > limit else ''}] ({len(labels)})"


def match_labels(model, label_names: list[str], *, flag: str, new_head_allowed: bool = False) -> LabelMatch:
    """Put `model`'s classifier (`model.classifier`, a Linear) and config in the order of `label_names`.

    Same names in another order: the rows are permuted. Other names: with `new_head_allowed`, a new classifier for
    `label_names`, initialized by the model's own `_init_weights`; without, a ValueError in one line naming both.
    """
    data = [str(name) for name in label_names]
    theirs = model_labels(model.config)
    if theirs == data:
        return LabelMatch(SAME, theirs)
    if sorted(theirs) == sorted(data) and len(set(data)) == len(data):
        classifier = _classifier(model, flag)
        order = torch.tensor([theirs.index(name) for name in data], device=classifier.weight.device)
        with torch.no_grad():
            classifier.weight.copy_(classifier.weight[order])
            if classifier.bias is not None:
                classifier.bias.copy_(classifier.bias[order])
        _set_labels(model.config, data)
        return LabelMatch(PERMUTED, theirs)
    if theirs == placeholder_labels(len(data)):
        _set_labels(model.config, data)
        return LabelMatch(BY_INDEX, theirs)
    if not new_head_allowed:
        raise ValueError(
            f"{flag} predicts the labels {shorten(theirs)}, not the data's {shorten(data)}; pass "
            "--ignore_mismatched_sizes to train a new classifier for the data's labels"
        )
    width = model.config.hidden_size
    old = getattr(model, "classifier", None)
    model.classifier = nn.Linear(width, len(data))
    if isinstance(old, nn.Module) and any(True for _ in old.parameters()):
        model.classifier.to(next(old.parameters()))
    model._init_weights(model.classifier)
    _set_labels(model.config, data)
    return LabelMatch(NEW_HEAD, theirs)


def _classifier(model, flag: str) -> nn.Linear:
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return classifier
    raise ValueError(
        f"{flag} has its labels in another order than the data's, and no linear `classifier` whose rows could be "
        "reordered; save it with the data's label order"
    )


def _set_labels(config, names: list[str]) -> None:
    config.id2label = dict(enumerate(names))
    config.label2id = {name: index for index, name in enumerate(names)}
