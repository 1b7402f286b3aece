"""Command line of run_image_classification.py: our flags, timm's and Transformers' spellings as aliases, checks.

Every value is checked here, strings handed to timm and Accelerate included, so a bad flag ends in one `error:`
line before any data is read or any model is built.
"""

import argparse
import os
import re

import torch
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from ..cli import command_parser
from ..configuration_vit_reduced import PRESETS, REDUCTION_STRATEGIES
from ..hub.pushing import add_hub_arguments, check_hub_arguments
from .compile import MODES as COMPILE_MODES
from .config import FLAG, NO_GPU, RunConfig
from .data import add_data_arguments
from .distillation import add_distillation_arguments, check_distillation_arguments
from .recipes import add_recipe_arguments, apply_recipe
from .starting_model import TIMM_DEFAULT, with_starting_preprocessing

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
    parser = command_parser(
        "train",
        description="Train a parameter-reduced ViT (arXiv 2512.01059) with timm's recipe on Accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--strategy", "--reduction-strategy", dest="strategy", choices=REDUCTION_STRATEGIES)
    model.add_argument("--reduction_mlp_ratio", "--reduction-mlp-ratio", type=float, default=None)
    model.add_argument("--mlp_share_group_size", type=int, default=2)
    model.add_argument("--model_size", choices=sorted(PRESETS), default=None, help="recipe")
    model.add_argument("--image_size", type=int, default=None, help="the preset's or the saved model's")
    model.add_argument(
        "--model_name_or_path",
        default=None,
        help="start from a saved or converted model (a folder, or a Hub id read with --hub_token or HF_TOKEN), "
        "with its preprocessing (flags given override it)",
    )
    model.add_argument("--revision", default=None, help="a Hub id's branch, tag or commit (default: main)")
    model.add_argument(
        "--ignore_mismatched_sizes",
        action="store_true",
        help="a starting model whose labels are not the data's gets a new classifier (Transformers' name)",
    )
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
    run.add_argument(
        "--ddp_timeout",
        type=int,
        default=1800,
        help="seconds a process waits for the others (🤗 Transformers' name and default): at the start for the "
        "machines to arrive, then in every collective for a lost one",
    )
    add_hub_arguments(parser.add_argument_group("Hub (🤗 Transformers' Trainer names)"))
    return parser


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """The run's configuration: flags parsed and checked, unset recipe fields filled (each value's source recorded),
    the workers fitted to the machine, what the machine cannot run recorded as off."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = apply_recipe(args)
    if crop_scale(args.scale) is None:
        parser.error(
            f"--scale={args.scale!r} is not valid; allowed: two numbers low,high with 0 < low <= high <= 1, e.g. 0.08,1.0"
        )
    strategy = args.strategy or (None if args.model_name_or_path else "baseline")
    experiment = args.experiment or f"{strategy or 'pretrained'}-{args.model_size}-seed{args.seed}"
    values = vars(args) | {
        "strategy": strategy,
        "experiment": experiment,
        "output_dir": args.output_dir or os.path.join("runs", experiment),
        "eval_batch_size": args.eval_batch_size or 2 * args.batch_size,
        "aa": None if args.aa is None or args.aa.lower() == "none" else args.aa,
        "scale": crop_scale(args.scale),
        "mean": tuple(args.mean),
        "std": tuple(args.std),
        "mixed_precision": mixed_precision(args.mixed_precision, args.amp, args.amp_dtype),
        "distillation": args.distillation or ("soft" if args.teacher_model_name_or_path else None),
        "crop_mode": args.crop_mode or "center",
    }
    sources["crop_mode"] = FLAG if args.crop_mode else TIMM_DEFAULT
    _check(parser, argparse.Namespace(**values))
    if args.benchmark_loop:  # the loop alone is timed: no evaluation, no checkpoint
        values |= {"checkpointing_steps": "no", "eval_every": 10**9}
    cores = cores_per_process()
    if sources.get("workers") != FLAG and args.workers > cores:
        # More workers than cores only compete with each other (and PyTorch warns about it on every run).
        values["workers"] = cores
        sources["workers"] += f", capped at the {cores} core(s) per process"
    if not torch.cuda.is_available():  # what ran is recorded, not what the recipe would run on a GPU
        for key in ("amp", "tf32", "cudnn_benchmark"):
            if values[key]:
                values[key], sources[key] = False, NO_GPU
    try:
        return with_starting_preprocessing(RunConfig(**values, sources=sources))
    except ValueError as error:
        parser.error(str(error))


def mixed_precision(requested: str | None, amp: bool, amp_dtype: str = "float16") -> str:
    """Accelerate's mixed precision: as requested; else with --amp on a GPU, fp16 (loss scaling, timm's) or bf16."""
    if requested:
        return requested
    if not amp or not torch.cuda.is_available():
        return "no"
    return {"float16": "fp16", "bfloat16": "bf16"}[amp_dtype]


def cores_per_process() -> int:
    """The cores this process may use, shared among the processes a launcher started on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


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
        "--ddp_timeout",
    ):
        if getattr(args, flag.lstrip("-")) < 1:
            fail(flag, "an integer >= 1")
    for flag in ("--max_train_steps", "--max_train_samples", "--max_eval_samples", "--image_size"):
        if getattr(args, flag.lstrip("-")) is not None and getattr(args, flag.lstrip("-")) < 1:
            fail(flag, "an integer >= 1")
    if args.lr <= 0:
        fail("--lr", "a number > 0")
    for revision, model in (
        ("--revision", "--model_name_or_path"),
        ("--teacher_revision", "--teacher_model_name_or_path"),
    ):
        if getattr(args, revision.lstrip("-")) is not None and getattr(args, model.lstrip("-")) is None:
            parser.error(f"{revision} needs {model} (it names a revision of that Hub id)")
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
    for flag in ("--mean", "--std"):
        if len(getattr(args, flag.lstrip("-"))) != 3 or (flag == "--std" and min(args.std) <= 0):
            fail(flag, "three numbers, one per RGB channel" + (", each > 0" if flag == "--std" else ""))
    if args.aa and (problem := augmentation_problem(args.aa)):
        fail(
            "--aa", f"a timm policy such as rand-m9-mstd0.5-inc1, original-mstd0.5 or augmix-m5, or 'none'; {problem}"
        )
    if problem := tracker_problem(args.report_to):
        fail("--report_to", f"Accelerate trackers, comma separated, or 'none'; {problem}")
    if args.batch_size % 2 and (args.mixup > 0 or args.cutmix > 0):
        fail("--batch_size", "an even number with mixup/cutmix (they pair each image with another)")
    if args.benchmark_loop and (args.max_train_steps is None or args.max_train_steps <= args.benchmark_warmup):
        parser.error("--benchmark_loop needs --max_train_steps above --benchmark_warmup")
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
