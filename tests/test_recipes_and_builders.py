"""The paper recipe against timm itself: each part built here equals the one timm's train.py builds from the paper's
command, and the defaults are timm's."""

import argparse
import dataclasses
import logging
import random
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import FastCollateMixup, resolve_data_config
from timm.data.random_erasing import RandomErasing
from timm.data.transforms_factory import create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import ModelEmaV3

from hf_vit_reduction.training import arguments, builders, recipes
from hf_vit_reduction.training import config as run_config
from hf_vit_reduction.training.arguments import parse_args

# timm's train.py (1.0.20-1.0.22, the paper's) as the seed's commands ran it: its argparse defaults for the fields
# that shape training, overridden by the flags of those commands.
TIMM_SEED_ARGS = SimpleNamespace(
    # the seed's flags
    batch_size=256,
    grad_accum_steps=2,
    opt="adamw",
    lr=0.001,
    weight_decay=0.05,
    sched="cosine",
    epochs=300,
    warmup_epochs=5,
    drop_path=0.1,
    mixup=0.8,
    cutmix=1.0,
    reprob=0.25,
    aa="rand-m9-mstd0.5-inc1",
    aug_repeats=3,
    amp=True,
    channels_last=True,
    model_ema=True,
    model_ema_decay=0.9998,
    seed=42,
    # train.py's defaults
    sched_on_updates=False,
    min_lr=0.0,
    warmup_lr=1e-5,
    warmup_prefix=False,
    cooldown_epochs=0,
    decay_epochs=90,
    decay_milestones=[90, 180, 270],
    patience_epochs=10,
    decay_rate=0.1,
    lr_noise=None,
    lr_noise_pct=0.67,
    lr_noise_std=1.0,
    lr_cycle_mul=1.0,
    lr_cycle_decay=0.5,
    lr_cycle_limit=1,
    lr_k_decay=1.0,
    eval_metric="top1",
    momentum=0.9,
    opt_eps=None,
    opt_betas=None,
    layer_decay=None,
    smoothing=0.1,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    mixup_mode="batch",
    cutmix_minmax=None,
    train_interpolation="random",
    scale=[0.08, 1.0],
    ratio=[3.0 / 4.0, 4.0 / 3.0],
    hflip=0.5,
    vflip=0.0,
    color_jitter=0.4,
    remode="pixel",
    recount=1,
    model_ema_warmup=False,
    amp_dtype="float16",
)
UPDATES_PER_EPOCH = 1251  # ImageNet-1k's 1,281,167 images, RepeatAugSampler over 2 GPUs, 256 x 2 per update


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset_name")
    recipes.add_recipe_arguments(parser)
    args = parser.parse_args(argv)
    return args, recipes.apply_recipe(args)


@pytest.fixture
def paper_args():
    """The paper recipe's table, as its flags fill it."""
    return parse(["--dataset_name", "imagenet-1k"])[0]


@pytest.fixture
def paper_config():
    """A run configuration of the paper's recipe, as the training script resolves it."""
    return parse_args(["--dataset_name", "imagenet-1k"])


def test_a_data_source_takes_the_paper_recipe_and_its_sources_are_recorded():
    args, sources = parse(["--dataset_name", "imagenet-1k", "--min-lr", "1e-6", "--no-model-ema", "--aa", "none"])
    assert args.recipe == "paper"
    assert (args.min_lr, sources["min_lr"]) == (1e-6, "command line")
    assert (args.model_ema, sources["model_ema"]) == (False, "command line")
    assert (args.aa, sources["aa"]) == ("none", "command line")  # the run's configuration turns it off (None)
    assert (args.warmup_lr, sources["warmup_lr"]) == (1e-5, "paper recipe")
    assert set(sources) == set(recipes.PAPER_RECIPE)
    assert sum(source == "paper recipe" for source in sources.values()) == len(recipes.PAPER_RECIPE) - 3


def test_the_paper_recipe_is_what_the_seed_command_ran_under_timm(paper_args):
    timm_args = TIMM_SEED_ARGS
    for field in (
        *("lr", "min_lr", "warmup_lr", "warmup_epochs", "epochs", "weight_decay", "drop_path", "smoothing"),
        *("mixup", "cutmix", "reprob", "aa", "hflip", "color_jitter", "train_interpolation", "aug_repeats"),
        *("model_ema", "model_ema_decay", "model_ema_warmup", "amp", "amp_dtype", "sched_on_updates"),
        *("batch_size", "grad_accum_steps", "channels_last"),
    ):
        assert getattr(paper_args, field) == getattr(timm_args, field), field
    assert list(paper_args.scale) == timm_args.scale
    data_config = resolve_data_config(pretrained_cfg=get_pretrained_cfg("vit_base_patch16_224").to_dict())
    assert (paper_args.interpolation, paper_args.crop_pct) == (data_config["interpolation"], data_config["crop_pct"])
    assert paper_args.random_erasing_stage == "batch"  # timm's prefetcher is on by default
    assert paper_args.tf32 and paper_args.cudnn_benchmark


def test_no_data_source_takes_the_digits_recipe_and_a_named_recipe_wins():
    args, sources = parse([])
    assert args.recipe == "digits" and sources["lr"] == "digits recipe" and args.model_size == "digits"
    args, sources = parse(["--dataset_name", "x", "--recipe", "paper-modern"])
    assert (args.amp_dtype, args.sched_on_updates) == ("bfloat16", True)
    assert sources["amp_dtype"] == "paper-modern recipe"


def test_transformers_and_timm_spellings_are_aliases():
    argv = [
        *("--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "48", "--learning_rate", "5e-4"),
        *("--gradient_accumulation_steps", "3", "--warmup-lr", "2e-6", "--sched-on-updates"),
        *("--amp-dtype", "bfloat16", "--train-interpolation", "bilinear", "--ema_shared_decay_per_use"),
    ]
    args, sources = parse(argv)
    assert (args.batch_size, args.eval_batch_size, args.lr, args.grad_accum_steps) == (32, 48, 5e-4, 3)
    assert (args.warmup_lr, args.sched_on_updates, args.amp_dtype) == (2e-6, True, "bfloat16")
    assert (args.train_interpolation, args.ema_shared_decay_per_use) == ("bilinear", True)
    assert sources["batch_size"] == sources["ema_shared_decay_per_use"] == "command line"


def _learning_rates(scheduler, optimizer, epochs: int, updates_per_epoch: int, timm_order: bool) -> list[float]:
    """The LR of every optimizer step, driving the scheduler as timm's train.py (epoch ends) or as our loop."""
    rates, step, group = [], 0, optimizer.param_groups[0]
    for epoch in range(epochs):
        if not timm_order:
            scheduler.step(epoch)
        for _ in range(updates_per_epoch):
            rates.append(group["lr"])
            step += 1
            scheduler.step_update(num_updates=step)
        if timm_order:
            scheduler.step(epoch + 1, 0.0)
    return rates


@pytest.mark.parametrize("variant", ["paper", "paper-modern"])
@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_every_update_of_the_300_epoch_schedule_has_timm_train_py_learning_rate(variant):
    config = parse_args(["--dataset_name", "imagenet-1k", "--recipe", variant])
    timm_args = SimpleNamespace(**{**vars(TIMM_SEED_ARGS), "sched_on_updates": config.sched_on_updates})
    ours_optimizer = torch.optim.SGD([torch.zeros(1)], lr=config.lr)
    timm_optimizer = torch.optim.SGD([torch.zeros(1)], lr=timm_args.lr)
    ours = builders.build_scheduler(
        ours_optimizer,
        **run_config.scheduler_kwargs(config),
        num_epochs=300 * 1.0,
        updates_per_epoch=UPDATES_PER_EPOCH,
    )
    timm_scheduler, num_epochs = create_scheduler_v2(
        timm_optimizer, **scheduler_kwargs(timm_args, decreasing_metric=False), updates_per_epoch=UPDATES_PER_EPOCH
    )
    assert num_epochs == 300
    expected = _learning_rates(timm_scheduler, timm_optimizer, num_epochs, UPDATES_PER_EPOCH, timm_order=True)
    got = _learning_rates(ours, ours_optimizer, num_epochs, UPDATES_PER_EPOCH, timm_order=False)
    assert len(got) == 375_300
    assert got == expected
    # The paper's LR is constant within an epoch and reaches 0 only after the last epoch.
    per_epoch = variant == "paper"
    assert (got[1] == got[0]) is per_epoch
    assert got[0] == 1e-5 and 0 < got[-1] < 1e-7


def _timm_loader_transform(is_training: bool):
    """What timm's create_loader builds from train.py's data config and the seed's flags (prefetcher on)."""
    args = TIMM_SEED_ARGS
    data_config = resolve_data_config(pretrained_cfg=get_pretrained_cfg("vit_base_patch16_224").to_dict())
    common = {"mean": data_config["mean"], "std": data_config["std"], "use_prefetcher": True}
    if not is_training:
        return create_transform(
            data_config["input_size"],
            is_training=False,
            interpolation=data_config["interpolation"],
            crop_pct=data_config["crop_pct"],
            **common,
        )
    return create_transform(
        data_config["input_size"],
        is_training=True,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        auto_augment=args.aa,
        interpolation=args.train_interpolation,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        **common,
    )


@pytest.mark.parametrize("is_training", [True, False])
def test_transforms_are_timm_create_loader_s(paper_config, is_training):
    ours = builders.build_transforms(image_size=224, **run_config.transform_kwargs(paper_config))[
        0 if is_training else 1
    ]
    theirs = _timm_loader_transform(is_training)
    # Same operations with the same parameters (interpolation included), down to the uint8 tensor timm's prefetcher
    # then normalizes on the device.
    assert [repr(op) for op in ours.transforms] == [repr(op) for op in theirs.transforms]
    assert type(ours.transforms[-1]).__name__ == "MaybePILToTensor"
    if is_training:
        assert "interpolation=bilinear bicubic)" in repr(ours.transforms[0])  # timm's "random"
        assert any(type(op).__name__ == "RandAugment" for op in ours.transforms)
    pixels = np.random.default_rng(0).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    for seed in range(4):
        outputs = [_seeded(seed, transform, image) for transform in (ours, theirs)]
        assert outputs[0].dtype == torch.uint8 and torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("is_training", [True, False])
def test_uint8_normalized_on_the_device_equals_timm_float_path(paper_config, is_training):
    """The same draws through timm's no-prefetcher transform (ToTensor + Normalize in the worker) give the very
    floats that our uint8 transform followed by `Normalize` on the batch gives."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = builders.build_transforms(image_size=64, **{**run_config.transform_kwargs(paper_config), "mean": mean})
    ours = ours[0 if is_training else 1]
    float_path = create_transform(
        64,
        is_training=is_training,
        scale=paper_config.scale,
        hflip=paper_config.hflip,
        auto_augment=paper_config.aa if is_training else None,
        interpolation=paper_config.train_interpolation if is_training else paper_config.interpolation,
        crop_pct=None if is_training else paper_config.crop_pct,
        mean=mean,
        std=std,
    )
    assert type(float_path.transforms[-1]).__name__ == "Normalize"
    normalize = builders.Normalize(mean, std, device="cpu")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    for seed in range(6):
        uint8 = torch.stack([_seeded(seed * 10 + i, ours, image) for i in range(2)])
        floats = torch.stack([_seeded(seed * 10 + i, float_path, image) for i in range(2)])
        assert torch.equal(normalize(uint8), floats)


def test_random_erasing_runs_on_the_batch_per_image_before_mixing_only_when_asked(paper_config):
    digits = parse_args([])
    for config in (paper_config, digits):
        train, _ = builders.build_transforms(image_size=32, **run_config.transform_kwargs(config))
        assert not any(isinstance(op, RandomErasing) for op in train.transforms)
    augmentation = builders.build_batch_augmentation(
        **run_config.batch_augmentation_kwargs(paper_config), num_classes=5, device="cpu"
    )
    assert augmentation.image_erasing is None and augmentation.random_erasing.probability == 0.25
    augmentation = builders.build_batch_augmentation(
        **run_config.batch_augmentation_kwargs(digits), num_classes=10, device="cpu"
    )
    assert augmentation.random_erasing is None
    erasing = augmentation.image_erasing
    assert (erasing.probability, erasing.mode, erasing.max_count) == (0.1, "pixel", 1)
    train, _ = builders.build_transforms(image_size=32, **run_config.transform_kwargs(digits))
    assert "interpolation=bicubic" in repr(train.transforms[0]).replace(" ", "")
    # Each image of the batch erased on its own (probability 1: all of them), then the erased images mixed.
    digits = dataclasses.replace(digits, reprob=1.0)
    augmentation = builders.build_batch_augmentation(
        **run_config.batch_augmentation_kwargs(digits), num_classes=10, device="cpu"
    )
    images, labels = torch.zeros(4, 3, 16, 16), torch.arange(4)
    erased = _seeded(3, augmentation.image_erasing, images.clone())
    assert all((erased[i] != 0).any() for i in range(4))
    assert not torch.equal(erased[0], erased[1])

    def erase_then_mix():
        return augmentation.mixup(augmentation.image_erasing(images.clone()), labels)

    for got, expected in zip(_seeded(3, augmentation, images.clone(), labels), _seeded(3, erase_then_mix)):
        assert torch.equal(got, expected)


def _seeded(seed, function, *args):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return function(*args)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0)])
def test_batch_augmentation_mixes_then_erases_as_timm_collate_and_prefetcher(paper_config, mixup, cutmix):
    config = dataclasses.replace(paper_config, mixup=mixup, cutmix=cutmix, reprob=1.0)  # erasing on every image
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 24, 24), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 3])
    mean, std = 127.5, 127.5

    def timm_pipeline():
        # FastCollateMixup in the loader's collate, then PrefetchLoader: normalize, random erasing.
        collate = FastCollateMixup(
            mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1, num_classes=5, prob=1.0, switch_prob=0.5
        )
        batch, targets = collate([(image, int(label)) for image, label in zip(pixels, labels)])
        batch = batch.float().sub_(mean).div_(std)
        return RandomErasing(1.0, mode="pixel", max_count=1, num_splits=0, device="cpu")(batch), targets

    augmentation = builders.build_batch_augmentation(
        **run_config.batch_augmentation_kwargs(config), num_classes=5, device="cpu"
    )
    ours, ours_targets = _seeded(2, augmentation, (pixels.float() - mean) / std, labels)
    theirs, their_targets = _seeded(2, timm_pipeline)
    torch.testing.assert_close(ours_targets, their_targets)
    # Equal up to the collate's rounding of a Mixup blend to whole grey levels (half a level at most).
    torch.testing.assert_close(ours, theirs, atol=0.51 / std, rtol=0)

    def erase_then_mix():
        erased = RandomErasing(1.0, mode="pixel", device="cpu")((pixels.float() - mean) / std)
        return augmentation.mixup(erased, labels.clone())[0]

    # With this seed the erased boxes and the mixed (or cut) pixels overlap: the other order gives another batch.
    differs = (_seeded(2, erase_then_mix) - theirs).abs() > 0.51 / std
    assert differs.float().mean() > 0.05


def test_batch_augmentation_is_the_identity_when_everything_is_off(paper_config):
    config = dataclasses.replace(paper_config, mixup=0.0, cutmix=0.0, reprob=0.0)
    augmentation = builders.build_batch_augmentation(
        **run_config.batch_augmentation_kwargs(config), num_classes=5, device="cpu"
    )
    images, labels = torch.randn(3, 3, 8, 8), torch.tensor([0, 4, 2])
    out_images, out_labels = augmentation(images.clone(), labels)
    assert torch.equal(out_images, images) and torch.equal(out_labels, labels)
    assert isinstance(
        builders.build_train_criterion(**run_config.criterion_kwargs(config)), LabelSmoothingCrossEntropy
    )
    config = dataclasses.replace(config, smoothing=0.0)
    assert type(builders.build_train_criterion(**run_config.criterion_kwargs(config))) is torch.nn.CrossEntropyLoss


def test_an_odd_batch_loses_its_last_image_to_mixup(paper_config):
    augmentation = builders.build_batch_augmentation(
        **run_config.batch_augmentation_kwargs(paper_config), num_classes=5, device="cpu"
    )
    images, targets = augmentation(torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4]))
    assert images.shape[0] == targets.shape[0] == 4 and targets.shape[1] == 5
    assert isinstance(
        builders.build_train_criterion(**run_config.criterion_kwargs(paper_config)), SoftTargetCrossEntropy
    )


# timm's ViT parameter names -> ours; `{mlp}` is the block's MLP index in our model.
TIMM_TO_OURS = (
    (r"^cls_token$", "vit.embeddings.cls_token"),
    (r"^pos_embed$", "vit.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "vit.embeddings.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"vit.layers.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.attn\.", r"vit.layers.\1.attention."),
    (r"^blocks\.(\d+)\.norm2\.", r"vit.layers.\1.layernorm_after."),
    # A shared MLP is named once, under its group's first block, by timm and by us alike.
    (r"^blocks\.(\d+)\.mlp\.", r"vit.layers.\1.mlp."),
    (r"^norm\.", "vit.layernorm."),
    (r"^head\.", "classifier."),
    (r"^dist_token$", "vit.embeddings.distillation_token"),
    (r"^reg_token$", "vit.embeddings.register_tokens"),
    (r"^head_dist\.", "distillation_classifier."),
    (r"^blocks\.(\d+)\.ls(\d)\.", r"vit.layers.\1.layer_scale\2."),
)


# The digits preset's shape as timm's arguments.
DIGITS_TIMM = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4, "num_classes": 10}


def _reference_timm_model(strategy: str) -> VisionTransformer:
    """The digits preset as a timm ViT with the strategy applied as the paper's reference code applies it."""
    model = VisionTransformer(
        img_size=32,
        patch_size=4,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0 if strategy == "thin" else 4.0,
        num_classes=10,
    )
    for index, block in enumerate(model.blocks):
        if strategy == "shallow":
            with torch.no_grad():
                block.mlp.fc1.weight = torch.nn.Parameter(block.mlp.fc1.weight[:128].clone())
                block.mlp.fc1.bias = torch.nn.Parameter(block.mlp.fc1.bias[:128].clone())
                block.mlp.fc2.weight = torch.nn.Parameter(block.mlp.fc2.weight[:, :128].clone())
        if strategy == "grouped" and index % 2:
            block.mlp = model.blocks[index - 1].mlp
    return model


def _our_name(timm_name: str) -> str:
    for pattern, replacement in TIMM_TO_OURS:
        if re.match(pattern, timm_name):
            return re.sub(pattern, replacement, timm_name)
    raise AssertionError(f"no mapping for {timm_name}")


def _groups_by_name(optimizer, names: dict) -> list[tuple[float, set[str]]]:
    return sorted((group["weight_decay"], {names[id(p)] for p in group["params"]}) for group in optimizer.param_groups)


@pytest.mark.parametrize("strategy", ["baseline", "grouped", "shallow", "thin"])
def test_optimizer_groups_are_timm_create_optimizer_v2_s(make_model, strategy):
    overrides = {"reduction_mlp_ratio": 2.0} if strategy == "thin" else {}
    model = make_model(strategy, **overrides)
    reference = _reference_timm_model(strategy)
    ours = builders.build_optimizer(model, lr=1e-3, weight_decay=0.05, fused=False)
    theirs = create_optimizer_v2(reference, **optimizer_kwargs(cfg=TIMM_SEED_ARGS))
    our_names = {id(p): name for name, p in model.named_parameters()}
    their_names = {id(p): _our_name(name) for name, p in reference.named_parameters()}
    assert _groups_by_name(ours, our_names) == _groups_by_name(theirs, their_names)
    no_decay = next(names for decay, names in _groups_by_name(ours, our_names) if decay == 0)
    assert {"vit.embeddings.position_embeddings", "vit.embeddings.cls_token"} <= no_decay
    assert type(ours) is type(theirs)
    for key in ("lr", "betas", "eps", "amsgrad", "maximize"):
        assert ours.defaults[key] == theirs.defaults[key], key


@pytest.mark.parametrize(
    "options, reference",
    [
        ({"distillation_token": True}, lambda: VisionTransformerDistilled(**DIGITS_TIMM)),
        (
            {"num_register_tokens": 2, "layer_scale_init_value": 1e-5},
            lambda: VisionTransformer(**DIGITS_TIMM, reg_tokens=2, init_values=1e-5),
        ),
    ],
)
def test_optimizer_groups_of_the_vit_family_are_timms(make_model, options, reference):
    # timm spares the distillation and register tokens (and LayerScale, 1-D) from weight decay.
    model, timm_model = make_model(**options), reference()
    ours = builders.build_optimizer(model, lr=1e-3, weight_decay=0.05, fused=False)
    theirs = create_optimizer_v2(timm_model, **optimizer_kwargs(cfg=TIMM_SEED_ARGS))
    our_names = {id(p): name for name, p in model.named_parameters()}
    their_names = {id(p): _our_name(name) for name, p in timm_model.named_parameters()}
    assert _groups_by_name(ours, our_names) == _groups_by_name(theirs, their_names)


def _moved_fraction(before: dict, after: dict, target: dict) -> dict:
    """Per tensor, how far the EMA moved toward the model: 1 - decay**uses for one update."""
    return {
        key: float(((after[key] - before[key]) / (target[key] - before[key])).mean())
        for key in before
        if before[key].is_floating_point()
    }


def _one_ema_update(ema, model):
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    target = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model, step=None)  # the configured decay (timm's step 1 copies the model outright)
    after = {k: v.clone() for k, v in ema.module.state_dict().items()}
    return _moved_fraction(before, after, target)


@pytest.mark.parametrize("per_use", [False, True])
def test_ema_decays_each_tensor_once_or_shared_ones_once_per_use(make_model, per_use):
    decay = 0.9
    model = make_model("grouped")
    ema = builders.build_ema(model, decay=decay, warmup=False, decay_per_use=per_use, total_updates=10**6)
    moved = _one_ema_update(ema, model)
    # Two shared MLPs (fc1/fc2 weight and bias), each listed under both blocks of its group.
    shared = {key for key in moved if ".mlp." in key}
    assert len(shared) == 16 and model.vit.layers[1].mlp is model.vit.layers[0].mlp
    for key, fraction in moved.items():
        expected = 1 - decay**2 if per_use and key in shared else 1 - decay
        assert fraction == pytest.approx(expected, abs=1e-4), key


def test_the_per_use_switch_reproduces_the_reference_ema_of_a_shared_mlp(make_model):
    # The reference: timm's ModelEmaV3 on a timm ViT whose blocks 0 and 1 (2 and 3) hold one MLP module, as the
    # paper's code builds it; ours: build_ema with --ema_shared_decay_per_use on our grouped model, same weights.
    model = make_model("grouped")
    reference = _reference_timm_model("grouped")
    weights = model.state_dict()
    reference.load_state_dict({name: weights[_our_name(name)] for name in reference.state_dict()})
    ours = builders.build_ema(model, decay=0.9, warmup=False, decay_per_use=True, total_updates=10**6)
    theirs = ModelEmaV3(reference, decay=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        # The same random training step on both models, then one EMA update each at the configured decay.
        with torch.no_grad():
            for name, parameter in reference.named_parameters():
                step = torch.randn(parameter.shape, generator=generator)
                parameter.add_(step)
                model.get_parameter(_our_name(name)).add_(step)
        ours.update(model, step=None)
        theirs.update(reference, step=None)
    ours_state, theirs_state = ours.module.state_dict(), theirs.module.state_dict()
    assert {_our_name(name) for name in theirs_state} == set(ours_state)
    for name, value in theirs_state.items():
        assert torch.allclose(ours_state[_our_name(name)], value, atol=1e-6), name


def test_an_ema_that_outlasts_the_run_is_reported_once(make_model, paper_config, caplog):
    caplog.set_level(logging.WARNING, logger="hf_vit_reduction.training.builders")
    builders.build_ema(make_model(), **run_config.ema_kwargs(paper_config), total_updates=2_000)
    [record] = caplog.records
    share = 100 * 0.9998**1999
    assert f"will still be {share:.0f}% the first update's weights after the run's 2000 updates" in record.getMessage()
    assert "the EMA is the model reported and saved" in record.getMessage()
    caplog.clear()
    builders.build_ema(make_model(), **run_config.ema_kwargs(paper_config), total_updates=300 * UPDATES_PER_EPOCH)
    warmup = dataclasses.replace(paper_config, model_ema_warmup=True)
    builders.build_ema(make_model(), **run_config.ema_kwargs(warmup), total_updates=2_000)
    assert caplog.records == []


def test_amp_is_timm_s_float16_with_loss_scaling_unless_asked(monkeypatch):
    assert arguments.mixed_precision("bf16", amp=False) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert arguments.mixed_precision(None, amp=True) == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert arguments.mixed_precision(None, amp=True) == "fp16"
    assert arguments.mixed_precision(None, amp=True, amp_dtype="bfloat16") == "bf16"
    assert arguments.mixed_precision(None, amp=False) == "no"


def test_torch_backends_follow_timm_train_py(paper_args):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    try:
        builders.configure_torch_backends(tf32=paper_args.tf32, cudnn_benchmark=paper_args.cudnn_benchmark)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
        builders.configure_torch_backends(tf32=False, cudnn_benchmark=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved
