"""The training recipes: their values (the paper's, a modern variant, the digits', a recovery's) and their flags.

The paper trained with timm's `train.py` (timm 1.0.20-1.0.22; its reference code is that script plus the reduction
strategies). Every default below is what those commands ran, read from timm's source; where this project offers
something else it is a named flag or a named recipe, never a silent difference.
"""

import argparse

from ..image_processing_vit_reduced import CROP_MODES
from .config import FLAG

# The paper's four commands (`distributed_train.sh 2 ... --batch-size 256 --grad-accum-steps 2 --opt adamw --lr 0.001
# --weight-decay 0.05 --sched cosine --epochs 300 --warmup-epochs 5 --drop-path 0.1 --mixup 0.8 --cutmix 1.0
# --reprob 0.25 --aa rand-m9-mstd0.5-inc1 --aug-repeats 3 --amp --channels-last --pin-mem --workers 20 --model-ema
# --model-ema-decay 0.9998 --seed 42`), with timm's defaults for everything they leave out.
PAPER_RECIPE = {
    "model_size": "base",
    "epochs": 300,
    "batch_size": 256,
    "grad_accum_steps": 2,
    "lr": 1e-3,
    "min_lr": 0.0,
    "warmup_lr": 1e-5,
    "warmup_epochs": 5,
    "sched_on_updates": False,
    "weight_decay": 0.05,
    "drop_path": 0.1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "smoothing": 0.1,
    "aa": "rand-m9-mstd0.5-inc1",
    "reprob": 0.25,
    "random_erasing_stage": "batch",
    "scale": (0.08, 1.0),
    "hflip": 0.5,
    "color_jitter": 0.4,
    "train_interpolation": "random",
    "interpolation": "bicubic",
    "crop_pct": 0.9,
    "mean": (0.5, 0.5, 0.5),  # timm's ViT normalization
    "std": (0.5, 0.5, 0.5),
    "aug_repeats": 3,
    "model_ema": True,
    "model_ema_decay": 0.9998,
    "model_ema_warmup": False,
    "ema_shared_decay_per_use": False,
    "amp": True,
    "amp_dtype": "float16",
    "tf32": True,
    "cudnn_benchmark": True,
    "channels_last": True,
    "workers": 8,
}

# The paper's recipe with what today's GPUs do better: bf16 autocast (no loss scaling) and the cosine stepped on
# every update instead of once per epoch.
PAPER_MODERN_RECIPE = {
    **PAPER_RECIPE,
    "amp_dtype": "bfloat16",
    "sched_on_updates": True,
}

# The embedded 8x8 digits: a small model, a short run, gentle crops, no flips (a flipped digit is another digit),
# no RandAugment and an EMA whose horizon fits a run of a few hundred steps. A patch here is about one pixel of
# the 8x8 original, so RandAugment's colour operations (invert, solarize, posterize) erase most of what a token
# carries: with them a baseline sat at chance for 25 epochs and ended at 40% (seed 2). The schedule, the LR floor,
# the interpolation and per-image erasing are the ones its README figures were measured with.
DIGITS_RECIPE = {
    **PAPER_RECIPE,
    "model_size": "digits",
    "epochs": 40,
    "batch_size": 64,
    "grad_accum_steps": 1,
    "lr": 2e-3,
    "min_lr": 1e-5,
    "warmup_lr": 1e-6,
    "warmup_epochs": 3,
    "sched_on_updates": True,
    "drop_path": 0.05,
    "aa": None,
    "mixup": 0.2,
    "cutmix": 0.0,
    "reprob": 0.1,
    "random_erasing_stage": "image",
    "scale": (0.6, 1.0),
    "hflip": 0.0,
    "train_interpolation": "bicubic",
    "crop_pct": 1.0,
    "model_ema_decay": 0.99,
    "model_ema_warmup": True,
    "amp": False,
    "channels_last": False,
    "workers": 2,
}

# Recovering a cut pretrained model (`--model_name_or_path` a converted, reduced folder, usually with a teacher): a
# quarter of the digits run, at a quarter of its LR (the weights start near a good solution; the full LR's first
# updates undo what the cut kept), one warm-up epoch, an EMA with warm-up (a 220-update run needs an EMA that
# follows early), lighter augmentation (Mixup 0.1, erasing 0.05, crops from 80%, no stochastic depth: the model
# already generalizes; strong augmentation slows the return to the source's accuracy). Chosen by reasoning, not by
# a sweep; the runs of model_cards/compression.md (one seed of the embedded digits) are the only measurement of them.
FINETUNE_RECIPE = {
    **DIGITS_RECIPE,
    "epochs": 10,
    "lr": 5e-4,
    "min_lr": 1e-6,
    "warmup_lr": 1e-6,
    "warmup_epochs": 1,
    "drop_path": 0.0,
    "mixup": 0.1,
    "reprob": 0.05,
    "scale": (0.8, 1.0),
    "model_ema_decay": 0.99,
    "model_ema_warmup": True,
}

RECIPES = {
    "paper": PAPER_RECIPE,
    "paper-modern": PAPER_MODERN_RECIPE,
    "digits": DIGITS_RECIPE,
    "finetune": FINETUNE_RECIPE,
}

# PIL's filters by timm's names; `random` picks bilinear or bicubic per image.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The "recipe" group: our flags with timm's and Transformers' spellings as aliases; None means "from the recipe"."""
    recipe = parser.add_argument_group(
        "recipe (defaults: the paper's with a data source, the digits' without; --recipe picks another)"
    )
    boolean = argparse.BooleanOptionalAction
    recipe.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="paper: the paper's timm commands; paper-modern: the same with bf16 and the LR stepped per update; "
        "digits: the embedded digits; finetune: a short recovery of a cut model",
    )
    recipe.add_argument("--num_train_epochs", "--epochs", dest="epochs", type=int, default=None)
    recipe.add_argument("--max_train_steps", type=int, default=None, help="overrides epochs (smoke runs)")
    recipe.add_argument(
        "--batch_size", "--batch-size", "--per_device_train_batch_size", type=int, default=None, help="per device"
    )
    recipe.add_argument(
        "--eval_batch_size", "--per_device_eval_batch_size", type=int, default=None, help="2 x batch size"
    )
    recipe.add_argument(
        "--grad_accum_steps", "--grad-accum-steps", "--gradient_accumulation_steps", type=int, default=None
    )
    recipe.add_argument("--lr", "--learning_rate", type=float, default=None, help="used as given, never scaled")
    recipe.add_argument("--min_lr", "--min-lr", type=float, default=None, help="the cosine's floor")
    recipe.add_argument("--warmup_lr", "--warmup-lr", type=float, default=None, help="the warm-up's first LR")
    recipe.add_argument("--warmup_epochs", "--warmup-epochs", type=float, default=None)
    recipe.add_argument(
        "--sched_on_updates",
        "--sched-on-updates",
        action=boolean,
        default=None,
        help="step the cosine on every update (the paper: once per epoch, timm's default)",
    )
    recipe.add_argument("--weight_decay", "--weight-decay", type=float, default=None)
    recipe.add_argument("--mixup", type=float, default=None, help="Mixup alpha")
    recipe.add_argument("--cutmix", type=float, default=None, help="CutMix alpha")
    recipe.add_argument("--smoothing", type=float, default=None, help="label smoothing")
    recipe.add_argument("--aa", default=None, help="RandAugment policy; 'none' turns it off")
    recipe.add_argument("--reprob", type=float, default=None, help="random erasing probability (pixel mode)")
    recipe.add_argument(
        "--random_erasing_stage",
        choices=("batch", "image"),
        default=None,
        help="batch: after Mixup/CutMix on the normalized batch (timm's prefetcher, the paper); "
        "image: per image before mixing (timm's --no-prefetcher)",
    )
    recipe.add_argument("--scale", default=None, help="RandomResizedCrop scale, e.g. 0.08,1.0")
    recipe.add_argument("--hflip", type=float, default=None, help="horizontal flip probability")
    recipe.add_argument(
        "--color_jitter",
        "--color-jitter",
        type=float,
        default=None,
        help="brightness/contrast/saturation; timm turns it off under RandAugment",
    )
    recipe.add_argument(
        "--train_interpolation",
        "--train-interpolation",
        choices=("random", *INTERPOLATIONS),
        default=None,
        help="random: bilinear or bicubic per image",
    )
    recipe.add_argument(
        "--interpolation", choices=INTERPOLATIONS, default=None, help="evaluation resize (ViT's pretrained: bicubic)"
    )
    recipe.add_argument("--crop_pct", "--crop-pct", type=float, default=None, help="evaluation center crop")
    recipe.add_argument(
        "--crop_mode",
        choices=CROP_MODES,
        default=None,
        help="evaluation resize: the shorter side (center, timm's default) or both sides (squash)",
    )
    recipe.add_argument("--mean", "--image_mean", type=float, nargs="+", default=None, help="per RGB channel")
    recipe.add_argument("--std", "--image_std", type=float, nargs="+", default=None, help="per RGB channel")
    recipe.add_argument("--aug_repeats", "--aug-repeats", type=int, default=None, help="only when distributed")
    recipe.add_argument("--model_ema", "--model-ema", action=boolean, default=None)
    recipe.add_argument("--model_ema_decay", "--model-ema-decay", type=float, default=None)
    recipe.add_argument("--model_ema_warmup", "--model-ema-warmup", action=boolean, default=None)
    recipe.add_argument(
        "--ema_shared_decay_per_use",
        action=boolean,
        default=None,
        help="decay a shared MLP's EMA once per block that uses it (decay**uses a step), as the paper's reference "
        "code did by accident; default: every tensor once a step",
    )
    recipe.add_argument(
        "--mixed_precision", choices=("no", "bf16", "fp16"), default=None, help="Accelerate's; overrides --amp"
    )
    recipe.add_argument("--amp", action=boolean, default=None, help="autocast in --amp_dtype on a GPU")
    recipe.add_argument(
        "--amp_dtype",
        "--amp-dtype",
        choices=("float16", "bfloat16"),
        default=None,
        help="float16 with loss scaling (timm's default) or bfloat16",
    )
    recipe.add_argument("--tf32", action=boolean, default=None, help="TF32 matmuls on a GPU, as timm's train.py")
    recipe.add_argument("--cudnn_benchmark", action=boolean, default=None, help="cudnn.benchmark, as timm's train.py")
    recipe.add_argument("--channels_last", "--channels-last", action=boolean, default=None)
    recipe.add_argument("--seed", type=int, default=42)


def apply_recipe(args: argparse.Namespace) -> dict[str, str]:
    """Fill every recipe field left unset; return where each value came from (`"<name> recipe"` or "command line").

    Without --recipe: the paper's with a data source (dataset_name, train_dir or validation_dir), else the digits'.
    """
    has_data = any(getattr(args, key, None) for key in ("dataset_name", "train_dir", "validation_dir"))
    name = getattr(args, "recipe", None) or ("paper" if has_data else "digits")
    args.recipe = name
    sources = {}
    for key, value in RECIPES[name].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
            sources[key] = f"{name} recipe"
        else:
            sources[key] = FLAG
    return sources
