"""Command line of run_image_classification.py: our flags, timm's spellings as aliases, and recipe defaults."""

import argparse
import os

from .configuration_vit_reduced import PRESETS, REDUCTION_STRATEGIES
from .training import DIGITS_RECIPE, PAPER_RECIPE


def _pair(text: str) -> tuple[float, float]:
    low, high = (float(x) for x in text.split(","))
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a parameter-reduced ViT (arXiv 2512.01059) with timm's recipe on Accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    recipe_default = "recipe"  # shown in --help; the value comes from the paper's or the digits recipe

    model = parser.add_argument_group("model")
    model.add_argument(
        "--strategy",
        "--reduction-strategy",
        dest="strategy",
        choices=REDUCTION_STRATEGIES,
    )
    model.add_argument("--reduction_mlp_ratio", "--reduction-mlp-ratio", type=float, default=None)
    model.add_argument("--mlp_share_group_size", type=int, default=2)
    model.add_argument("--model_size", choices=sorted(PRESETS), default=None, help=recipe_default)
    model.add_argument("--image_size", type=int, default=None, help="the preset's")
    model.add_argument(
        "--model_name_or_path",
        default=None,
        help="start from a saved or converted model",
    )
    model.add_argument("--drop_path", "--drop-path", type=float, default=None, help=recipe_default)

    data = parser.add_argument_group("data (no source: the embedded digits)")
    data.add_argument(
        "--dataset_name",
        default=None,
        help="Hub id, local dataset folder, e.g. imagenet-1k",
    )
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_dir", default=None, help="ImageNet-layout folder: <class>/<image>")
    data.add_argument("--validation_dir", default=None)
    data.add_argument("--train_split", default="train")
    data.add_argument("--validation_split", default="validation")
    data.add_argument(
        "--train_val_split",
        type=float,
        default=0.15,
        help="held out when there is no validation",
    )
    data.add_argument("--image_column", default=None, help="detected when absent")
    data.add_argument("--label_column", default=None, help="detected when absent")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--streaming", action="store_true")
    data.add_argument("--cache_dir", default=None)
    data.add_argument("--on_bad_image", choices=("skip", "error"), default="skip")
    data.add_argument("--workers", "--num_workers", type=int, default=None, help=recipe_default)
    data.add_argument("--pin_mem", "--pin-mem", action="store_true")

    recipe = parser.add_argument_group("recipe (defaults: the paper's; the digits recipe without a data source)")
    recipe.add_argument("--num_train_epochs", "--epochs", dest="epochs", type=int, default=None)
    recipe.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="overrides epochs (smoke runs)",
    )
    recipe.add_argument(
        "--batch_size",
        "--batch-size",
        "--per_device_train_batch_size",
        type=int,
        default=None,
    )
    recipe.add_argument("--eval_batch_size", type=int, default=None, help="2 x batch size")
    recipe.add_argument(
        "--grad_accum_steps",
        "--grad-accum-steps",
        "--gradient_accumulation_steps",
        type=int,
        default=None,
    )
    recipe.add_argument(
        "--lr",
        "--learning_rate",
        type=float,
        default=None,
        help="used as given, never scaled",
    )
    recipe.add_argument("--min_lr", "--min-lr", type=float, default=None)
    recipe.add_argument("--warmup_lr", "--warmup-lr", type=float, default=None)
    recipe.add_argument("--warmup_epochs", "--warmup-epochs", type=float, default=None)
    recipe.add_argument("--weight_decay", "--weight-decay", type=float, default=None)
    recipe.add_argument("--mixup", type=float, default=None)
    recipe.add_argument("--cutmix", type=float, default=None)
    recipe.add_argument("--smoothing", type=float, default=None)
    recipe.add_argument("--aa", default=None, help="RandAugment policy; 'none' turns it off")
    recipe.add_argument("--reprob", type=float, default=None)
    recipe.add_argument(
        "--scale",
        type=_pair,
        default=None,
        help="RandomResizedCrop scale, e.g. 0.08,1.0",
    )
    recipe.add_argument("--hflip", type=float, default=None)
    recipe.add_argument("--crop_pct", type=float, default=None)
    recipe.add_argument(
        "--aug_repeats",
        "--aug-repeats",
        type=int,
        default=None,
        help="only when distributed",
    )
    recipe.add_argument(
        "--model_ema",
        "--model-ema",
        action=argparse.BooleanOptionalAction,
        default=None,
    )
    recipe.add_argument("--model_ema_decay", "--model-ema-decay", type=float, default=None)
    recipe.add_argument(
        "--model_ema_warmup",
        "--model-ema-warmup",
        action=argparse.BooleanOptionalAction,
    )
    recipe.add_argument(
        "--mixed_precision",
        choices=("no", "bf16", "fp16"),
        default=None,
        help="Accelerate's; --amp picks one",
    )
    recipe.add_argument(
        "--amp",
        action="store_true",
        help="bf16 where supported, else fp16 with loss scaling",
    )
    recipe.add_argument("--channels_last", "--channels-last", action="store_true")
    recipe.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", "--output", default=None, help="runs/<experiment>")
    run.add_argument("--experiment", default=None, help="<strategy>-<model_size>-seed<seed>")
    run.add_argument(
        "--eval_every",
        type=int,
        default=1,
        help="evaluate every N epochs (and at the end)",
    )
    run.add_argument(
        "--checkpointing_steps",
        default="epoch",
        help="N: every N updates and at each epoch's end; 'epoch'; or 'no'",
    )
    run.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=3,
        help="the newest kept, plus the best",
    )
    run.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    run.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start over a folder that holds a previous run's checkpoints",
    )
    run.add_argument(
        "--report_to",
        default="tensorboard",
        help="Accelerate trackers, comma separated, or 'none'",
    )
    run.add_argument(
        "--benchmark_loop",
        action="store_true",
        help="time the full loop on in-memory data against the bare step, then stop",
    )
    run.add_argument("--benchmark_warmup", type=int, default=5)
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_token", default=None, help="never written anywhere")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, fill the unset recipe fields from the paper's or the digits recipe, and check values."""
    parser = build_parser()
    args = parser.parse_args(argv)
    has_data = bool(args.dataset_name or args.train_dir or args.validation_dir)
    recipe = PAPER_RECIPE if has_data else DIGITS_RECIPE
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.strategy is None and not args.model_name_or_path:
        args.strategy = "baseline"
    if args.aa and args.aa.lower() == "none":
        args.aa = None
    args.experiment = args.experiment or f"{args.strategy or 'pretrained'}-{args.model_size}-seed{args.seed}"
    args.output_dir = args.output_dir or os.path.join("runs", args.experiment)
    args.eval_batch_size = args.eval_batch_size or 2 * args.batch_size
    _check(parser, args)
    return args


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    def fail(flag, allowed):
        parser.error(f"{flag}={getattr(args, flag.lstrip('-'))!r} is not valid; allowed: {allowed}")

    for flag in ("--batch_size", "--grad_accum_steps", "--epochs", "--eval_every"):
        if getattr(args, flag.lstrip("-")) < 1:
            fail(flag, "an integer >= 1")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        fail("--max_train_steps", "an integer >= 1")
    for flag in ("--max_train_samples", "--max_eval_samples"):
        if getattr(args, flag.lstrip("-")) is not None and getattr(args, flag.lstrip("-")) < 1:
            fail(flag, "an integer >= 1")
    if args.lr <= 0:
        fail("--lr", "a number > 0")
    for flag in (
        "--weight_decay",
        "--mixup",
        "--cutmix",
        "--warmup_epochs",
        "--min_lr",
        "--warmup_lr",
    ):
        if getattr(args, flag.lstrip("-")) < 0:
            fail(flag, "a number >= 0")
    for flag in ("--smoothing", "--reprob", "--drop_path", "--hflip"):
        if not 0 <= getattr(args, flag.lstrip("-")) < 1 and not (flag == "--hflip" and args.hflip == 1):
            fail(flag, "a number in [0, 1)")
    if not 0 < args.model_ema_decay < 1:
        fail("--model_ema_decay", "a number in (0, 1)")
    if args.aug_repeats < 0:
        fail("--aug_repeats", "an integer >= 0")
    if not 0 < args.crop_pct <= 1:
        fail("--crop_pct", "a number in (0, 1]")
    if args.batch_size % 2 and (args.mixup > 0 or args.cutmix > 0):
        fail(
            "--batch_size",
            "an even number with mixup/cutmix (they pair each image with another)",
        )
    if args.benchmark_loop:
        if args.max_train_steps is None or args.max_train_steps <= args.benchmark_warmup:
            parser.error("--benchmark_loop needs --max_train_steps above --benchmark_warmup")
        args.checkpointing_steps, args.eval_every = "no", 10**9
    if args.checkpoints_total_limit < 1:
        fail("--checkpoints_total_limit", "an integer >= 1")
    if args.checkpointing_steps not in ("epoch", "no") and not args.checkpointing_steps.isdigit():
        fail("--checkpointing_steps", "an integer N, 'epoch' or 'no'")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no length to count epochs by)")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.push_to_hub:
        # The seam for Hub publishing (model cards, upload), which is its own piece of work.
        parser.error("--push_to_hub is not available yet; upload the output folder with `hf upload`")
