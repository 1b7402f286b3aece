"""The training recipe: the paper's (timm's) values, the digits values, their flags, and the parts built from them."""

import argparse

import torch
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

# No weight decay on these (besides biases and norms, which timm excludes as 1-D tensors), as timm's ViT declares.
NO_WEIGHT_DECAY = ("*position_embeddings", "*cls_token")

# The paper's recipe: timm's ImageNet recipe for ViT-B/16 (DeiT-B's global batch of 1024 over 2 GPUs x 128 x 4).
PAPER_RECIPE = {
    "model_size": "base",
    "epochs": 300,
    "batch_size": 128,
    "grad_accum_steps": 4,
    "lr": 1e-3,
    "min_lr": 1e-5,
    "warmup_lr": 1e-6,
    "warmup_epochs": 5,
    "weight_decay": 0.05,
    "drop_path": 0.1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "smoothing": 0.1,
    "aa": "rand-m9-mstd0.5-inc1",
    "reprob": 0.25,
    "scale": (0.08, 1.0),
    "hflip": 0.5,
    "crop_pct": 0.9,
    "aug_repeats": 3,
    "model_ema": True,
    "model_ema_decay": 0.9998,
    "model_ema_warmup": False,
    "workers": 8,
}

# The embedded 8x8 digits: a small model, a short run, gentle crops, no flips (a flipped digit is another digit),
# no RandAugment and an EMA whose horizon fits a run of a few hundred steps. A patch here is about one pixel of
# the 8x8 original, so RandAugment's colour operations (invert, solarize, posterize) erase most of what a token
# carries: with them a baseline sat at chance for 25 epochs and ended at 40% (seed 2). Measured in the README.
DIGITS_RECIPE = {
    **PAPER_RECIPE,
    "model_size": "digits",
    "epochs": 40,
    "batch_size": 64,
    "grad_accum_steps": 1,
    "lr": 2e-3,
    "warmup_epochs": 3,
    "drop_path": 0.05,
    "aa": None,
    "mixup": 0.2,
    "cutmix": 0.0,
    "reprob": 0.1,
    "scale": (0.6, 1.0),
    "hflip": 0.0,
    "crop_pct": 1.0,
    "model_ema_decay": 0.99,
    "model_ema_warmup": True,
    "workers": 2,
}


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's flags; None means "from the recipe", filled in by `apply_recipe`."""
    recipe = parser.add_argument_group("recipe (defaults: the paper's; the digits recipe without a data source)")
    recipe_default = "recipe"  # shown in --help; the value comes from the paper's or the digits recipe
    recipe.add_argument("--num_train_epochs", "--epochs", dest="epochs", type=int, default=None, help=recipe_default)
    recipe.add_argument("--max_train_steps", type=int, default=None, help="overrides epochs (smoke runs)")
    recipe.add_argument(
        "--batch_size", "--batch-size", "--per_device_train_batch_size", type=int, default=None, help=recipe_default
    )
    recipe.add_argument(
        "--eval_batch_size", "--per_device_eval_batch_size", type=int, default=None, help="2 x batch size"
    )
    recipe.add_argument(
        "--grad_accum_steps",
        "--grad-accum-steps",
        "--gradient_accumulation_steps",
        type=int,
        default=None,
        help=recipe_default,
    )
    recipe.add_argument("--lr", "--learning_rate", type=float, default=None, help="used as given, never scaled")
    recipe.add_argument("--min_lr", "--min-lr", type=float, default=None, help=recipe_default)
    recipe.add_argument("--warmup_lr", "--warmup-lr", type=float, default=None, help=recipe_default)
    recipe.add_argument("--warmup_epochs", "--warmup-epochs", type=float, default=None, help=recipe_default)
    recipe.add_argument("--weight_decay", "--weight-decay", type=float, default=None, help=recipe_default)
    recipe.add_argument("--mixup", type=float, default=None, help=recipe_default)
    recipe.add_argument("--cutmix", type=float, default=None, help=recipe_default)
    recipe.add_argument("--smoothing", type=float, default=None, help=recipe_default)
    recipe.add_argument("--aa", default=None, help="RandAugment policy; 'none' turns it off")
    recipe.add_argument("--reprob", type=float, default=None, help=recipe_default)
    recipe.add_argument("--scale", default=None, help="RandomResizedCrop scale, e.g. 0.08,1.0")
    recipe.add_argument("--hflip", type=float, default=None, help=recipe_default)
    recipe.add_argument("--crop_pct", type=float, default=None, help=recipe_default)
    recipe.add_argument("--aug_repeats", "--aug-repeats", type=int, default=None, help="only when distributed")
    recipe.add_argument("--model_ema", "--model-ema", action=argparse.BooleanOptionalAction, default=None)
    recipe.add_argument("--model_ema_decay", "--model-ema-decay", type=float, default=None, help=recipe_default)
    recipe.add_argument("--model_ema_warmup", "--model-ema-warmup", action=argparse.BooleanOptionalAction)
    recipe.add_argument(
        "--mixed_precision", choices=("no", "bf16", "fp16"), default=None, help="Accelerate's; --amp picks one"
    )
    recipe.add_argument("--amp", action="store_true", help="bf16 where supported, else fp16 with loss scaling")
    recipe.add_argument("--channels_last", "--channels-last", action="store_true")
    recipe.add_argument("--seed", type=int, default=42)


def apply_recipe(args: argparse.Namespace) -> dict[str, str]:
    """Fill each unset recipe field from the paper's recipe (with a data source) or the digits recipe (without).

    Returns where each recipe value came from: "paper recipe", "digits recipe" or "command line".
    """
    has_data = bool(args.dataset_name or args.train_dir or args.validation_dir)
    recipe, name = (PAPER_RECIPE, "paper recipe") if has_data else (DIGITS_RECIPE, "digits recipe")
    sources = {}
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
            sources[key] = name
        else:
            sources[key] = "command line"
    if args.aa and args.aa.lower() == "none":
        args.aa = None
    return sources


def mixed_precision(requested: str | None, amp: bool) -> str:
    """Accelerate's mixed precision: as requested; with --amp bf16 where supported, else fp16 (loss scaling)."""
    if requested:
        return requested
    if not amp or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, fused: bool = False):
    """AdamW with timm's groups: no weight decay on biases, norms, the position embedding and the CLS token."""
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def build_scheduler(optimizer, args, *, num_epochs: float, updates_per_epoch: int):
    """timm's cosine schedule with linear warm-up, stepped on every optimizer update."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=num_epochs,
        warmup_epochs=args.warmup_epochs,
        min_lr=args.min_lr,
        warmup_lr=args.warmup_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_transforms(args, *, image_size: int, mean, std, interpolation: str = "bicubic"):
    """timm's ImageNet train transform (RandomResizedCrop, flip, RandAugment, RandomErasing) and eval transform."""
    train = create_transform(
        input_size=image_size,
        is_training=True,
        scale=args.scale,
        hflip=args.hflip,
        auto_augment=args.aa or None,
        interpolation=interpolation,
        mean=mean,
        std=std,
        re_prob=args.reprob,
        re_mode="pixel",
        re_count=1,
    )
    evaluation = create_transform(
        input_size=image_size,
        is_training=False,
        interpolation=interpolation,
        mean=mean,
        std=std,
        crop_pct=args.crop_pct,
    )
    return train, evaluation


def _unchanged(images, labels):
    return images, labels


def build_batch_augmentation(args, *, num_classes: int, device=None):
    """What the loop applies to every training batch: timm's Mixup/CutMix, which folds label smoothing into its soft
    targets, or nothing when both are off."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return _unchanged
    return Mixup(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing, num_classes=num_classes
    )


def build_train_criterion(args) -> torch.nn.Module:
    if args.mixup > 0 or args.cutmix > 0:
        return SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return torch.nn.CrossEntropyLoss()


def build_ema(model: torch.nn.Module, args, *, total_updates: int) -> ModelEmaV3 | None:
    """timm's ModelEmaV3. It walks `state_dict()`, where our shared MLPs appear once, so each updates once a step."""
    if not args.model_ema:
        return None
    return ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
