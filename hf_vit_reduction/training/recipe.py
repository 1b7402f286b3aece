"""The training recipe: its values (the paper's, a modern variant, the digits'), its flags, and timm's parts built from it.

The paper trained with timm's `train.py` (timm 1.0.20-1.0.22; its reference code is that script plus the reduction
strategies). Every default below is what those commands ran, read from timm's source; where this project offers
something else it is a named flag or the named `paper-modern` recipe, never a silent difference.
"""

import argparse
import logging
from collections import Counter, defaultdict

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.data.transforms_factory import create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from .config import FLAG

logger = logging.getLogger(__name__)

# No weight decay on these (besides biases and norms, which timm excludes as 1-D tensors), as timm's ViT declares in
# `no_weight_decay()`. timm matches them as fnmatch patterns from 1.0.21 on (exact names before), hence setup.py's pin.
NO_WEIGHT_DECAY = ("*position_embeddings", "*cls_token")

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

# An EMA without warm-up still holding more than this share of the first update's weights at the end of the run is
# reported with a warning: the reported model has then barely moved from where the run started.
EMA_STALE_SHARE = 0.01


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


def mixed_precision(requested: str | None, amp: bool, amp_dtype: str = "float16") -> str:
    """Accelerate's mixed precision: as requested; else with --amp on a GPU, fp16 (loss scaling, timm's) or bf16."""
    if requested:
        return requested
    if not amp or not torch.cuda.is_available():
        return "no"
    return {"float16": "fp16", "bfloat16": "bf16"}[amp_dtype]


def configure_torch_backends(*, tf32: bool, cudnn_benchmark: bool) -> None:
    """TF32 matmuls and cudnn.benchmark, which timm's train.py turns on (no effect without a GPU)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW with timm's groups: no weight decay on biases, norms, the position embedding and the CLS token."""
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def build_scheduler(
    optimizer,
    *,
    num_epochs: float,
    updates_per_epoch: int,
    warmup_epochs: float,
    min_lr: float,
    warmup_lr: float,
    sched_on_updates: bool,
):
    """timm's cosine with linear warm-up, stepped per epoch (the paper) or per update (--sched_on_updates).

    Drive it as timm's train.py does: `scheduler.step(epoch)` at the start of every epoch (a resumed one included)
    and `scheduler.step_update(num_updates=step)` after every update; each call is a no-op in the other mode.
    """
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=num_epochs,
        warmup_epochs=warmup_epochs,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        step_on_epochs=not sched_on_updates,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_transforms(
    *,
    image_size: int,
    scale: tuple[float, float],
    hflip: float,
    color_jitter: float,
    auto_augment: str | None,
    train_interpolation: str,
    interpolation: str,
    crop_pct: float,
    mean: tuple[float, float, float],
):
    """timm's per-image train transform (crop, flip, RandAugment or colour jitter) and eval, ending in uint8 tensors.

    These are timm's transforms as its prefetcher runs them (`use_prefetcher=True`): a worker hands over uint8
    images, and the conversion to float, the normalization (`Normalize`) and random erasing happen on the batch, on
    the training device (`build_batch_augmentation`). `mean` is still needed here: RandAugment fills the corners of
    a rotated or sheared image with it.
    """
    train = create_transform(
        input_size=image_size,
        is_training=True,
        scale=scale,
        hflip=hflip,
        color_jitter=color_jitter,
        auto_augment=auto_augment,
        interpolation=train_interpolation,
        mean=mean,
        use_prefetcher=True,
    )
    evaluation = create_transform(
        input_size=image_size,
        is_training=False,
        interpolation=interpolation,
        crop_pct=crop_pct,
        mean=mean,
        use_prefetcher=True,
    )
    return train, evaluation


class Normalize:
    """uint8 images to normalized floats on their device: the same operations, so the same floats, as torchvision's
    `ToTensor` (a division by 255) followed by `Normalize` in a worker."""

    def __init__(self, mean, std, *, device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255).sub_(self.mean).div_(self.std)


class BatchAugmentation:
    """What timm applies to a whole training batch, in timm's order: Mixup/CutMix, then random erasing.

    timm mixes uint8 images in its collate (`FastCollateMixup`, rounding a Mixup blend to integers), then its
    prefetcher normalizes and erases. Here the batch arrives normalized: a Mixup blend is convex and CutMix copies
    pixels, so both commute with the per-channel affine normalization, and the result equals timm's up to that
    uint8 rounding (at most half a grey level). Erasing fills with N(0, 1) noise on the normalized scale, as timm's.
    Per-image erasing (`random_erasing_stage="image"`, timm's --no-prefetcher order) erases each image with the
    same probability before mixing. Identity when all are off.
    """

    def __init__(
        self, mixup: Mixup | None, random_erasing: RandomErasing | None, *, image_erasing: RandomErasing | None = None
    ):
        self.mixup = mixup
        self.random_erasing = random_erasing
        self.image_erasing = image_erasing

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.image_erasing is not None:
            images = self.image_erasing(images)
        if self.mixup is not None:
            if len(labels) % 2:  # Mixup pairs image i with image n-1-i; a skipped unreadable image left one over
                images, labels = images[:-1], labels[:-1]
            images, labels = self.mixup(images, labels)
        if self.random_erasing is not None:
            images = self.random_erasing(images)
        return images, labels


def build_batch_augmentation(
    *,
    mixup: float,
    cutmix: float,
    smoothing: float,
    reprob: float,
    random_erasing_stage: str,
    num_classes: int,
    device,
) -> BatchAugmentation:
    """Mixup/CutMix (label smoothing folded into the soft targets) and random erasing, after mixing by default."""
    mixing = None
    if mixup > 0 or cutmix > 0:
        mixing = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes)
    erasing = None
    if reprob > 0:
        erasing = RandomErasing(reprob, mode="pixel", max_count=1, num_splits=0, device=device)
    if random_erasing_stage == "image":
        return BatchAugmentation(mixing, None, image_erasing=erasing)
    return BatchAugmentation(mixing, erasing)


def build_train_criterion(*, mixes_pairs: bool, smoothing: float) -> torch.nn.Module:
    """Soft-target cross-entropy with Mixup/CutMix (which carry the smoothing), else smoothed or plain CE, as timm."""
    if mixes_pairs:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return torch.nn.CrossEntropyLoss()


class SharedWeightsModelEma(ModelEmaV3):
    """timm's ModelEmaV3 for a model whose blocks may share one MLP module, updating each stored tensor once a step.

    A grouped model's `state_dict()` lists a shared MLP under every block of its group (`vit.layers.0.mlp` and
    `vit.layers.1.mlp` are one module), so plain ModelEmaV3 lerps it once per use: decay**uses a step, the
    averaging of the paper's reference code, which shares the same way. Here each tensor is lerped once, with weight
    1 - decay, or 1 - decay**uses with `decay_per_use=True` to reproduce the reference exactly (one lerp also on a
    GPU, where a fused foreach update of a tensor listed twice is not guaranteed to apply both times).
    """

    def __init__(self, model: torch.nn.Module, *, decay_per_use: bool = False, **kwargs):
        super().__init__(model, **kwargs)
        self.decay_per_use = decay_per_use

    def apply_update_(self, model: torch.nn.Module, decay: float):
        uses, pairs = Counter(), {}
        for ema_value, model_value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if not ema_value.is_floating_point():
                ema_value.copy_(model_value)
                continue
            uses[ema_value.data_ptr()] += 1
            pairs.setdefault(ema_value.data_ptr(), (ema_value, model_value))
        by_weight = defaultdict(lambda: ([], []))
        for pointer, (ema_value, model_value) in pairs.items():
            ema_values, model_values = by_weight[1.0 - decay ** (uses[pointer] if self.decay_per_use else 1)]
            ema_values.append(ema_value)
            model_values.append(model_value.to(device=ema_value.device))
        for weight, (ema_values, model_values) in by_weight.items():
            self._foreach_lerp_(ema_values, model_values, weight=weight)


def build_ema(
    model: torch.nn.Module, *, decay: float, warmup: bool, decay_per_use: bool, total_updates: int
) -> SharedWeightsModelEma:
    """The EMA timm keeps (and reports) with --model_ema.

    Each unique tensor is decayed once a step; --ema_shared_decay_per_use reproduces the reference's double decay of
    shared MLPs. Without warm-up, an EMA whose horizon is long against the run hardly leaves the first update's
    weights; that is logged once here, since the EMA is what gets reported and saved.
    """
    ema = SharedWeightsModelEma(model, decay=decay, use_warmup=warmup, decay_per_use=decay_per_use)
    # timm's first update copies the model (decay 0 at step 1); the copy then decays over the remaining updates.
    stale = decay ** max(total_updates - 1, 0)
    if not warmup and stale > EMA_STALE_SHARE:
        logger.warning(
            "the EMA (decay %g, horizon ~%d updates) will still be %.0f%% the first update's weights after the "
            "run's %d updates, and the EMA is the model reported and saved; use --model_ema_warmup, a lower "
            "--model_ema_decay or --no-model_ema",
            decay,
            round(1 / (1 - decay)),
            100 * stale,
            total_updates,
        )
    return ema
