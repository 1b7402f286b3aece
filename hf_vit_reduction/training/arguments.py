"""Command line of run_image_classification.py: our flags, timm's and Transformers' spellings as aliases, checks.

Every value is checked here, strings handed to timm and Accelerate included, so a bad flag ends in one `error:`
line before any data is read or any model is built.
"""

import argparse
import os
import re

from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from ..cli import CommandParser
from ..configuration_vit_reduced import PRESETS, REDUCTION_STRATEGIES
from ..hub.pushing import add_hub_arguments, check_hub_arguments
from .compile import MODES as COMPILE_MODES
from .data import add_data_arguments
from .distillation import add_distillation_arguments, check_distillation_arguments
from .recipe import add_recipe_arguments, apply_recipe, mixes_pairs

# timm's augmentation policy strings (timm.data.auto_augment): a kind, then `-`-separated sections `<key><number>`.
# timm skips a section without a number and stops at an unknown key only sometimes, so they are checked here.
AUGMENT_SECTIONS = {
    "rand": ("mstd", "mmax", "inc", "m", "n", "p"),
    "augmix": ("mstd", "m", "w", "d", "a", "b"),
    "original": ("mstd",),
    "originalr": ("mstd",),
    "v0": ("mstd",),
    "v0r": ("mstd",),
    "3a": ("mstd",),
}
_SECTION = re.compile(r"^([a-z]+)(\d+(?:\.\d+)?)$")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        description="Train a parameter-reduced ViT (arXiv 2512.01059) with timm's recipe on Accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--strategy", "--reduction-strategy", dest="strategy", choices=REDUCTION_STRATEGIES)
    model.add_argument("--reduction_mlp_ratio", "--reduction-mlp-ratio", type=float, default=None)
    model.add_argument("--mlp_share_group_size", type=int, default=2)
    model.add_argument("--model_size", choices=sorted(PRESETS), default=None, help="recipe")
    model.add_argument("--image_size", type=int, default=None, help="the preset's or the saved model's")
    model.add_argument("--model_name_or_path", default=None, help="start from a saved or converted model")
    model.add_argument("--drop_path", "--drop-path", type=float, default=None, help="recipe")

    add_data_arguments(parser.add_argument_group("data (no source: the embedded digits)"))

    add_recipe_arguments(parser)
    add_distillation_arguments(parser.add_argument_group("distillation (recovering a cut model)"))

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", "--output", default=None, help="runs/<experiment>")
    run.add_argument("--experiment", default=None, help="<strategy>-<model_size>-seed<seed>")
    run.add_argument("--eval_every", type=int, default=1, help="evaluate every N epochs (and at the end)")
    run.add_argument(
        "--checkpointing_steps", default="epoch", help="N: every N updates and at each epoch's end; 'epoch'; or 'no'"
    )
    run.add_argument("--checkpoints_total_limit", type=int, default=3, help="the newest kept, plus the best")
    run.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint folder; 'latest'; or 'auto': this run's latest checkpoint if --output_dir holds one, "
        "else a fresh start (a requeued job's command needs no edit)",
    )
    run.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over a folder that holds a previous run's checkpoints",
    )
    run.add_argument("--report_to", default="tensorboard", help="Accelerate trackers, comma separated, or 'none'")
    run.add_argument(
        "--benchmark_loop",
        action="store_true",
        help="time the full loop on in-memory data against the bare step, then stop (hf_vit_reduction.loop_benchmark)",
    )
    run.add_argument("--benchmark_warmup", type=int, default=5)
    run.add_argument(
        "--torch_compile",
        "--torchcompile",
        action="store_true",
        help="torch.compile the model (training and evaluation) and the EMA (hf_vit_reduction.training.compile)",
    )
    run.add_argument("--torch_compile_mode", choices=COMPILE_MODES, default=None, help="torch.compile's mode")
    run.add_argument(
        "--log_interval",
        "--log-interval",
        type=int,
        default=50,
        help="the host reads the loss every N updates (and before every evaluation and checkpoint); a signal or a "
        "non-finite loss takes effect there",
    )
    add_hub_arguments(parser.add_argument_group("Hub (🤗 Transformers' Trainer names)"))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, fill the unset recipe fields (recording each value's source), fit the workers to the machine, check."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = apply_recipe(args)
    if args.strategy is None and not args.model_name_or_path:
        args.strategy = "baseline"
    args.experiment = args.experiment or f"{args.strategy or 'pretrained'}-{args.model_size}-seed{args.seed}"
    args.output_dir = args.output_dir or os.path.join("runs", args.experiment)
    args.eval_batch_size = args.eval_batch_size or 2 * args.batch_size
    cores = cores_per_process()
    if sources.get("workers") != "command line" and args.workers > cores:
        # More workers than cores only compete with each other (and PyTorch warns about it on every run).
        args.workers = cores
        sources["workers"] += f", capped at the {cores} core(s) per process"
    _check(parser, args)
    args.recipe_sources = sources
    return args


def cores_per_process() -> int:
    """The cores this process may use, shared among the processes a launcher started on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def effective_recipe(args: argparse.Namespace) -> dict:
    """Each recipe value as the run uses it, with where it came from: {field: {"value": ..., "source": ...}}."""
    return {key: {"value": getattr(args, key), "source": source} for key, source in args.recipe_sources.items()}


FITTED = "fitted to the dataset"


def fit_to_dataset(args: argparse.Namespace, images_per_process: int | None) -> str | None:
    """Shrink a recipe's batch (and accumulation) that is larger than the data, so that a small folder trains.

    Only values the recipe chose are fitted (their source becomes `FITTED`); values given on the command line are
    kept, and `UpdatePlan` then says which flags to lower. Returns the one line to log, or None when nothing changed.
    """
    batch_size, grad_accum_steps = args.batch_size, args.grad_accum_steps
    if images_per_process is None or batch_size * grad_accum_steps <= images_per_process:
        return None
    sources = args.recipe_sources
    if sources.get("grad_accum_steps") != "command line":
        grad_accum_steps = max(1, min(grad_accum_steps, images_per_process // batch_size))
    if sources.get("batch_size") != "command line":
        batch_size = min(batch_size, images_per_process // grad_accum_steps)
        if args.mixup > 0 or args.cutmix > 0:
            batch_size -= batch_size % 2  # mixup pairs each image with another
    if not 1 <= batch_size * grad_accum_steps <= images_per_process:
        return None  # an explicit value cannot fit: UpdatePlan's error names it
    line = (
        f"{FITTED}: --batch_size {batch_size}, --grad_accum_steps {grad_accum_steps} (the {args.recipe} recipe's "
        f"{args.batch_size} x {args.grad_accum_steps} images per update exceed the {images_per_process} training "
        "images each process gets)"
    )
    for key, value in (("batch_size", batch_size), ("grad_accum_steps", grad_accum_steps)):
        if value != getattr(args, key):
            setattr(args, key, value)
            sources[key] = FITTED
    return line


def augmentation_problem(policy: str) -> str | None:
    """Why timm cannot use this RandAugment/AutoAugment/AugMix string, or None when it can."""
    kind, *sections = policy.split("-")
    if kind not in AUGMENT_SECTIONS:
        return f"it starts with {kind!r}, not one of {sorted(AUGMENT_SECTIONS)}"
    for section in sections:
        if kind == "rand" and section.startswith("t"):
            continue  # a named set of operations, checked by building the transform below
        match = _SECTION.match(section)
        if not match or match.group(1) not in AUGMENT_SECTIONS[kind]:
            return f"section {section!r} is not <key><number> with a key of {AUGMENT_SECTIONS[kind]}"
    from timm.data import create_transform

    try:
        create_transform(input_size=32, is_training=True, auto_augment=policy)
    except (AssertionError, KeyError, ValueError) as error:
        return f"timm rejects it ({error or type(error).__name__})"
    return None


def crop_scale(value) -> tuple[float, float] | None:
    """`--scale` as (low, high) with 0 < low <= high <= 1, or None when it is not one."""
    try:
        parts = tuple(float(part) for part in value.split(",")) if isinstance(value, str) else tuple(value)
    except ValueError:
        return None
    if len(parts) != 2 or not 0 < parts[0] <= parts[1] <= 1:
        return None
    return parts


def tracker_problem(report_to: str) -> str | None:
    if report_to == "none":
        return None
    known = [tracker.value for tracker in LoggerType]
    for name in report_to.split(","):
        if name not in known:
            return f"{name!r} is not one of {known} or 'none'"
        if name != "all" and name not in [str(tracker) for tracker in get_available_trackers()]:
            return f"{name!r} is not installed (pip install {name})"
    return None


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    def fail(flag, allowed):
        parser.error(f"{flag}={getattr(args, flag.lstrip('-'))!r} is not valid; allowed: {allowed}")

    for flag in (
        "--batch_size",
        "--eval_batch_size",
        "--grad_accum_steps",
        "--epochs",
        "--eval_every",
        "--log_interval",
    ):
        if getattr(args, flag.lstrip("-")) < 1:
            fail(flag, "an integer >= 1")
    for flag in ("--max_train_steps", "--max_train_samples", "--max_eval_samples", "--image_size"):
        if getattr(args, flag.lstrip("-")) is not None and getattr(args, flag.lstrip("-")) < 1:
            fail(flag, "an integer >= 1")
    if args.lr <= 0:
        fail("--lr", "a number > 0")
    for flag in ("--weight_decay", "--mixup", "--cutmix", "--warmup_epochs", "--min_lr", "--warmup_lr"):
        if getattr(args, flag.lstrip("-")) < 0:
            fail(flag, "a number >= 0")
    for flag in ("--smoothing", "--reprob", "--drop_path", "--hflip"):
        if not 0 <= getattr(args, flag.lstrip("-")) < 1 and not (flag == "--hflip" and args.hflip == 1):
            fail(flag, "a number in [0, 1)")
    if not 0 < args.train_val_split < 1:
        fail("--train_val_split", "a number in (0, 1)")
    if not 0 < args.model_ema_decay < 1:
        fail("--model_ema_decay", "a number in (0, 1)")
    if args.aug_repeats < 0:
        fail("--aug_repeats", "an integer >= 0")
    if args.workers < 0:
        fail("--workers", "an integer >= 0")
    if not 0 < args.crop_pct <= 1:
        fail("--crop_pct", "a number in (0, 1]")
    scale = crop_scale(args.scale)
    if scale is None:
        fail("--scale", "two numbers low,high with 0 < low <= high <= 1, e.g. 0.08,1.0")
    args.scale = scale
    if args.aa and (problem := augmentation_problem(args.aa)):
        fail(
            "--aa", f"a timm policy such as rand-m9-mstd0.5-inc1, original-mstd0.5 or augmix-m5, or 'none'; {problem}"
        )
    if problem := tracker_problem(args.report_to):
        fail("--report_to", f"Accelerate trackers, comma separated, or 'none'; {problem}")
    if args.batch_size % 2 and mixes_pairs(args):
        fail("--batch_size", "an even number with mixup/cutmix (they pair each image with another)")
    if args.benchmark_loop:
        if args.max_train_steps is None or args.max_train_steps <= args.benchmark_warmup:
            parser.error("--benchmark_loop needs --max_train_steps above --benchmark_warmup")
        args.checkpointing_steps, args.eval_every = "no", 10**9
    if args.checkpoints_total_limit < 1:
        fail("--checkpoints_total_limit", "an integer >= 1")
    if args.checkpointing_steps not in ("epoch", "no") and not args.checkpointing_steps.isdigit():
        fail("--checkpointing_steps", "an integer N, 'epoch' or 'no'")
    if args.checkpointing_steps.isdigit() and int(args.checkpointing_steps) < 1:
        fail("--checkpointing_steps", "an integer N >= 1, 'epoch' or 'no'")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no length to count epochs by)")
    if problem := check_hub_arguments(args):
        parser.error(problem)
    if problem := check_distillation_arguments(args):
        parser.error(problem)
