"""timm's parts of a training run, built from explicit values: precision, optimizer, scheduler, transforms, device
normalization, batch augmentation, loss and EMA. The values come from a recipe (`recipes.py`) through the run's
configuration (`config.py`); each builder here is what timm's `train.py` builds for the same flags.
"""

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

logger = logging.getLogger(__name__)

# No weight decay on these (besides biases, norms and LayerScale, which timm excludes as 1-D tensors), as timm's ViT
# declares in `no_weight_decay()` (its distillation and register tokens included; MAP's query is decayed). timm
# matches them as fnmatch patterns from 1.0.21 on (exact names before), hence setup.py's pin.
NO_WEIGHT_DECAY = ("*position_embeddings", "*cls_token", "*distillation_token", "*register_tokens")

# An EMA without warm-up still holding more than this share of the first update's weights at the end of the run is
# reported with a warning: the reported model has then barely moved from where the run started.
EMA_STALE_SHARE = 0.01


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
    crop_mode: str,
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
        crop_mode=crop_mode,
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
