"""A training run's configuration: every value the run uses, resolved once, frozen, each recipe value with its source.

`arguments.parse_args` resolves it from the flags, the recipe and the machine; the one later resolution is
`fitted_to_dataset`, which returns a new configuration once the data is counted. Nothing changes a configuration:
builders take the values they use as keyword parameters (timm's style), and `run_record` is what `args.json`, the
model card and `--resume_from_checkpoint auto` read.
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

FLAG = "command line"
FITTED = "fitted to the dataset"
NO_GPU = "off: no GPU on this machine"


@dataclass(frozen=True)
class RunConfig:
    # model
    strategy: str | None  # None: the starting model's own
    reduction_mlp_ratio: float | None
    mlp_share_group_size: int
    model_size: str
    image_size: int | None  # None: the preset's or the starting model's
    model_name_or_path: str | None
    revision: str | None  # of a Hub id given as --model_name_or_path
    ignore_mismatched_sizes: bool  # a starting model with other labels gets a new classifier
    drop_path: float
    # data
    dataset_name: str | None
    dataset_config_name: str | None
    train_dir: str | None
    validation_dir: str | None
    train_split: str
    validation_split: str
    train_val_split: float
    image_column: str | None
    label_column: str | None
    max_train_samples: int | None
    max_eval_samples: int | None
    streaming: bool
    cache_dir: str | None
    on_bad_image: str
    workers: int
    pin_mem: bool
    # recipe
    recipe: str
    epochs: int
    max_train_steps: int | None
    batch_size: int
    eval_batch_size: int
    grad_accum_steps: int
    lr: float
    min_lr: float
    warmup_lr: float
    warmup_epochs: float
    sched_on_updates: bool
    weight_decay: float
    mixup: float
    cutmix: float
    smoothing: float
    aa: str | None
    reprob: float
    random_erasing_stage: str
    scale: tuple[float, float]
    hflip: float
    color_jitter: float
    train_interpolation: str
    interpolation: str
    crop_pct: float
    crop_mode: str  # timm's: "center" (the shorter side resized) or "squash" (both sides)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    aug_repeats: int
    model_ema: bool
    model_ema_decay: float
    model_ema_warmup: bool
    ema_shared_decay_per_use: bool
    mixed_precision: str  # what ran: "no" on a machine without a GPU unless asked for
    amp: bool
    amp_dtype: str
    tf32: bool
    cudnn_benchmark: bool
    channels_last: bool
    seed: int
    # distillation
    teacher_model_name_or_path: str | None
    teacher_revision: str | None
    distillation: str | None
    distillation_temperature: float
    distillation_alpha: float
    # run
    output_dir: str
    experiment: str
    eval_every: int
    checkpointing_steps: str
    checkpoints_total_limit: int
    resume_from_checkpoint: str | None
    overwrite_output_dir: bool
    report_to: str
    benchmark_loop: bool
    benchmark_warmup: int
    torch_compile: bool
    torch_compile_mode: str | None
    log_interval: int
    ddp_timeout: int  # seconds
    # Hub
    push_to_hub: bool
    hub_model_id: str | None
    hub_private_repo: bool
    hub_strategy: str
    hub_revision: str | None
    hub_token: str | None
    hub_push_attempts: int
    hub_push_max_wait: float
    # where each recipe value came from: "<name> recipe", FLAG, FITTED, NO_GPU, ...
    sources: Mapping[str, str]

    @property
    def mixes_pairs(self) -> bool:
        """Mixup or CutMix is on: each training image is blended with another of its batch."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def global_batch(self) -> int:
        """Images per update on one process (times the processes for the whole run)."""
        return self.batch_size * self.grad_accum_steps

    def recipe_record(self) -> dict:
        """Each recipe value as the run uses it, with where it came from: {field: {"value": ..., "source": ...}}."""
        return {key: {"value": getattr(self, key), "source": source} for key, source in self.sources.items()}

    def run_record(self, *, num_processes: int) -> dict:
        """args.json: every value but secrets (Transformers' example logs the Hub token), and the recipe's record."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        public = {key: value for key, value in values.items() if key != "sources" and "token" not in key}
        return public | {"num_processes": num_processes, "recipe": self.recipe_record()}


def fitted_to_dataset(config: RunConfig, images_per_process: int | None) -> RunConfig:
    """A recipe's batch (and accumulation) shrunk to the data when larger, so that a small folder trains.

    Only values the recipe chose are fitted (their source becomes `FITTED`); values given on the command line are
    kept, and `UpdatePlan` then says which flags to lower.
    """
    batch_size, grad_accum_steps = config.batch_size, config.grad_accum_steps
    if images_per_process is None or batch_size * grad_accum_steps <= images_per_process:
        return config
    if config.sources.get("grad_accum_steps") != FLAG:
        grad_accum_steps = max(1, min(grad_accum_steps, images_per_process // batch_size))
    if config.sources.get("batch_size") != FLAG:
        batch_size = min(batch_size, images_per_process // grad_accum_steps)
        if config.mixes_pairs:
            batch_size -= batch_size % 2  # mixup pairs each image with another
    if not 1 <= batch_size * grad_accum_steps <= images_per_process:
        return config  # an explicit value cannot fit: UpdatePlan's error names it
    changed = {
        key: value
        for key, value in (("batch_size", batch_size), ("grad_accum_steps", grad_accum_steps))
        if value != getattr(config, key)
    }
    return dataclasses.replace(config, **changed, sources={**config.sources, **dict.fromkeys(changed, FITTED)})


# The keyword parameters of each builder, read from a configuration (timm's `scheduler_kwargs(args)` idiom): the one
# place where configuration fields meet builder parameters.
def transform_kwargs(config: RunConfig) -> dict:
    """For `recipe.build_transforms` (with `image_size`)."""
    return {
        "scale": config.scale,
        "hflip": config.hflip,
        "color_jitter": config.color_jitter,
        "auto_augment": config.aa,
        "train_interpolation": config.train_interpolation,
        "interpolation": config.interpolation,
        "crop_pct": config.crop_pct,
        "crop_mode": config.crop_mode,
        "mean": config.mean,
    }


def scheduler_kwargs(config: RunConfig) -> dict:
    """For `recipe.build_scheduler` (with the plan's `num_epochs` and `updates_per_epoch`)."""
    return {
        "warmup_epochs": config.warmup_epochs,
        "min_lr": config.min_lr,
        "warmup_lr": config.warmup_lr,
        "sched_on_updates": config.sched_on_updates,
    }


def batch_augmentation_kwargs(config: RunConfig) -> dict:
    """For `recipe.build_batch_augmentation` (with `num_classes` and `device`)."""
    return {
        "mixup": config.mixup,
        "cutmix": config.cutmix,
        "smoothing": config.smoothing,
        "reprob": config.reprob,
        "random_erasing_stage": config.random_erasing_stage,
    }


def criterion_kwargs(config: RunConfig) -> dict:
    """For `recipe.build_train_criterion`."""
    return {"mixes_pairs": config.mixes_pairs, "smoothing": config.smoothing}


def ema_kwargs(config: RunConfig) -> dict:
    """For `recipe.build_ema` (with the model and `total_updates`), when `config.model_ema`."""
    return {
        "decay": config.model_ema_decay,
        "warmup": config.model_ema_warmup,
        "decay_per_use": config.ema_shared_decay_per_use,
    }


def train_loader_kwargs(config: RunConfig) -> dict:
    """For `loaders.build_train_loader` (with the dataset, sampler and process)."""
    return {
        "batch_size": config.batch_size,
        "workers": config.workers,
        "pin_memory": config.pin_mem,
        "seed": config.seed,
    }
