import argparse
import itertools
import math

import pytest
import torch

from hf_vit_reduction import recipe
from hf_vit_reduction.recipe import (
    DIGITS_RECIPE,
    PAPER_RECIPE,
    build_batch_augmentation,
    build_ema,
    build_optimizer,
    build_scheduler,
    build_train_criterion,
)


def test_no_weight_decay_on_biases_norms_position_embedding_and_cls_token(make_model):
    model = make_model("grouped")
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {group["weight_decay"]: {names[id(p)] for p in group["params"]} for group in optimizer.param_groups}
    assert set(groups) == {0.0, 0.05}
    no_decay, decay = groups[0.0], groups[0.05]
    assert {"vit.embeddings.position_embeddings", "vit.embeddings.cls_token"} <= no_decay
    assert all(n.endswith("bias") or "layernorm" in n or "embeddings." in n for n in no_decay)
    assert decay == {n for n, p in model.named_parameters() if p.ndim > 1} - no_decay
    assert "vit.mlps.0.fc1.weight" in decay and "vit.embeddings.projection.weight" in decay
    assert len(no_decay) + len(decay) == len(list(model.parameters()))
    assert optimizer.defaults["lr"] == 1e-3


def test_cosine_schedule_with_warmup_steps_per_update(make_model):
    optimizer = build_optimizer(make_model(), lr=1e-3, weight_decay=0.05)
    args = argparse.Namespace(warmup_epochs=2, min_lr=1e-5, warmup_lr=1e-6)
    scheduler = build_scheduler(optimizer, args, num_epochs=10, updates_per_epoch=5)
    lrs = []
    for step in range(51):  # as the loop calls it (and timm's train.py): step(epoch) at each epoch's start
        if step % 5 == 0:
            scheduler.step(step // 5)
        scheduler.step_update(num_updates=step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[10] == pytest.approx(
        1e-3 * 0.5 * (1 + math.cos(math.pi * 10 / 50)) + 1e-5 * (1 - 0.5 * (1 + math.cos(math.pi * 10 / 50))), rel=1e-3
    )
    assert max(lrs) <= 1e-3 and lrs[-1] == pytest.approx(1e-5)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))


def recipe_args(**overrides):
    return argparse.Namespace(**{**PAPER_RECIPE, **overrides})


def test_mixup_targets_sum_to_one_and_include_smoothing():
    augment = build_batch_augmentation(recipe_args(mixup=0.8, cutmix=1.0, smoothing=0.1), num_classes=10)
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8)
    mixed, targets = augment(images.clone(), labels)
    assert targets.shape == (8, 10)
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    assert targets.min().item() == pytest.approx(0.1 / 10)  # smoothing reaches every class
    assert not torch.equal(mixed, images)
    assert type(build_train_criterion(recipe_args(smoothing=0.0))).__name__ == "SoftTargetCrossEntropy"
    plain = recipe_args(mixup=0.0, cutmix=0.0)
    same_images, same_labels = build_batch_augmentation(plain, num_classes=10)(images, labels)
    assert same_images is images and same_labels is labels
    assert type(build_train_criterion(plain)).__name__ == "LabelSmoothingCrossEntropy"
    assert type(build_train_criterion(recipe_args(mixup=0.0, cutmix=0.0, smoothing=0.0))) is torch.nn.CrossEntropyLoss


def test_ema_updates_each_shared_tensor_once(make_model):
    model = make_model("grouped")
    ema = build_ema(model, recipe_args(model_ema_decay=0.5, model_ema_warmup=False), total_updates=10)
    before = ema.module.vit.mlps[0].fc1.weight.clone()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    ema.update(model)
    # Updated once: 0.5 * old + 0.5 * (old + 1) = old + 0.5. Twice (as walking aliased tensors would) gives + 0.75.
    assert torch.allclose(ema.module.vit.mlps[0].fc1.weight, before + 0.5)
    assert len(ema.module.state_dict()) == len(dict(model.named_parameters())) + len(list(model.buffers()))
    assert build_ema(model, recipe_args(model_ema=False), total_updates=10) is None


def test_apply_recipe_fills_unset_fields_and_names_their_source():
    args = argparse.Namespace(**dict.fromkeys(PAPER_RECIPE), dataset_name=None, train_dir="x", validation_dir=None)
    args.lr, args.aa = 5e-4, "none"
    sources = recipe.apply_recipe(args)
    assert (args.lr, args.aa, args.epochs) == (5e-4, None, PAPER_RECIPE["epochs"])
    assert sources["lr"] == "command line" and sources["epochs"] == "paper recipe"
    digits = argparse.Namespace(**dict.fromkeys(PAPER_RECIPE), dataset_name=None, train_dir=None, validation_dir=None)
    assert set(recipe.apply_recipe(digits).values()) == {"digits recipe"}
    assert digits.model_size == DIGITS_RECIPE["model_size"] == "digits"
