import dataclasses

import pytest
import torch
from accelerate.utils import LoggerType

from hf_vit_reduction.training import arguments
from hf_vit_reduction.training.arguments import augmentation_problem, parse_args
from hf_vit_reduction.training.config import fitted_to_dataset
from hf_vit_reduction.training.recipes import DIGITS_RECIPE, PAPER_RECIPE


def test_no_data_source_takes_the_digits_recipe():
    args = parse_args(["--strategy", "shallow"])
    assert args.model_size == "digits" and args.epochs == DIGITS_RECIPE["epochs"]
    assert args.experiment == "shallow-digits-seed42" and args.output_dir.endswith("shallow-digits-seed42")
    assert args.aa is None and args.hflip == 0.0  # no RandAugment, no flips on digits
    explicit = parse_args(["--aa", "rand-m9-mstd0.5-inc1"])
    # An explicit flag overrides the recipe.
    assert explicit.aa == "rand-m9-mstd0.5-inc1"


def test_a_data_source_takes_the_paper_recipe():
    args = parse_args(["--dataset_name", "imagenet-1k"])
    for key in ("lr", "weight_decay", "mixup", "cutmix", "smoothing", "aa", "reprob", "aug_repeats", "drop_path"):
        assert getattr(args, key) == PAPER_RECIPE[key], key
    assert (args.lr, args.warmup_epochs, args.model_ema_decay, args.epochs) == (1e-3, 5, 0.9998, 300)
    assert args.strategy == "baseline" and args.model_size == "base"


def test_timm_spellings_are_aliases():
    argv = (
        "--reduction-strategy grouped --reduction-mlp-ratio 0.5 --batch-size 32 --grad-accum-steps 2 --lr 5e-4 "
        "--epochs 7 --warmup-epochs 1 --drop-path 0.2 --mixup 0.5 --cutmix 0.0 --reprob 0.0 --aa none "
        "--aug-repeats 0 --model-ema --model-ema-decay 0.99 --workers 1 --pin-mem --channels-last --seed 3 "
        "--experiment e1 --output /tmp/out1"
    )
    args = parse_args(argv.split())
    assert (args.strategy, args.reduction_mlp_ratio, args.batch_size, args.grad_accum_steps) == ("grouped", 0.5, 32, 2)
    assert (args.lr, args.epochs, args.warmup_epochs, args.drop_path) == (5e-4, 7, 1, 0.2)
    assert (args.mixup, args.cutmix, args.reprob, args.aa, args.aug_repeats) == (0.5, 0.0, 0.0, None, 0)
    assert (args.model_ema, args.model_ema_decay, args.workers, args.pin_mem) == (True, 0.99, 1, True)
    assert (args.channels_last, args.seed, args.experiment, args.output_dir) == (True, 3, "e1", "/tmp/out1")


def test_explicit_flags_override_the_recipe():
    args = parse_args(["--epochs", "2", "--no-model-ema", "--model_size", "tiny"])
    assert (args.epochs, args.model_ema, args.model_size) == (2, False, "tiny")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strategy", "pruned"], "invalid choice: 'pruned'"),
        (["--batch_size", "0"], "--batch_size=0 is not valid; allowed: an integer >= 1"),
        (["--ddp_timeout", "0"], "--ddp_timeout=0 is not valid; allowed: an integer >= 1"),
        (["--batch_size", "33"], "--batch_size=33 is not valid; allowed: an even number"),
        (["--lr", "-1"], "--lr=-1.0 is not valid"),
        (["--smoothing", "1.5"], "--smoothing=1.5 is not valid; allowed: a number in [0, 1)"),
        (["--model_ema_decay", "1.0"], "--model_ema_decay=1.0 is not valid"),
        (["--checkpointing_steps", "often"], "--checkpointing_steps='often' is not valid"),
        (["--streaming", "--dataset_name", "x"], "--streaming needs --max_train_steps"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--aa", "rand-m9-mstd0.5-foo"], "--aa='rand-m9-mstd0.5-foo' is not valid; allowed: a timm policy"),
        (["--aa", "rand-mfoo"], "section 'mfoo' is not <key><number>"),
        (["--aa", "randaugment"], "it starts with 'randaugment'"),
        (["--scale", "0.08"], "--scale='0.08' is not valid; allowed: two numbers low,high"),
        (["--scale", "0.9,0.1"], "--scale='0.9,0.1' is not valid"),
        (["--scale", "a,b"], "--scale='a,b' is not valid"),
        (["--report_to", "tensorbord"], "--report_to='tensorbord' is not valid; allowed: Accelerate trackers"),
        (["--train_val_split", "1.5"], "--train_val_split=1.5 is not valid; allowed: a number in (0, 1)"),
        (["--image_size", "0"], "--image_size=0 is not valid"),
        (["--workers", "-1"], "--workers=-1 is not valid"),
    ],
)
def test_bad_values_exit_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_tracker_that_is_not_installed_is_named_with_how_to_install_it(monkeypatch, capsys):
    # Whatever this machine has installed, here only TensorBoard is: wandb, a tracker Accelerate knows, is missing.
    monkeypatch.setattr(arguments, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    for report_to in ("wandb", "tensorboard,wandb"):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--report_to", report_to])
        assert exit_info.value.code == 2
        message = capsys.readouterr().err
        assert f"--report_to={report_to!r} is not valid; allowed: Accelerate trackers" in message
        assert "'wandb' is not installed (pip install wandb)" in message
    assert parse_args(["--report_to", "tensorboard"]).report_to == "tensorboard"


def test_transformers_spellings_are_aliases():
    argv = (
        "--per_device_train_batch_size 16 --per_device_eval_batch_size 48 --learning_rate 3e-4 "
        "--gradient_accumulation_steps 2 --num_train_epochs 5 --num_workers 1"
    )
    args = parse_args(argv.split())
    assert (args.batch_size, args.eval_batch_size, args.lr, args.grad_accum_steps) == (16, 48, 3e-4, 2)
    assert (args.epochs, args.workers) == (5, 1)


@pytest.mark.parametrize(
    "policy", ["rand-m9-mstd0.5-inc1", "rand-m7-n3", "original-mstd0.5", "v0", "augmix-m5-w4-d2", "3a"]
)
def test_timm_augmentation_policies_are_accepted(policy):
    assert augmentation_problem(policy) is None
    assert parse_args(["--aa", policy]).aa == policy


def test_scale_is_parsed_and_recipe_sources_are_recorded():
    args = parse_args(["--dataset_name", "imagenet-1k", "--scale", "0.5,1", "--lr", "1e-4"])
    assert args.scale == (0.5, 1.0)
    recipe = args.recipe_record()
    assert recipe["lr"] == {"value": 1e-4, "source": "command line"}
    assert recipe["scale"] == {"value": (0.5, 1.0), "source": "command line"}
    assert recipe["weight_decay"] == {"value": 0.05, "source": "paper recipe"}
    assert parse_args([]).recipe_record()["epochs"] == {"value": 40, "source": "digits recipe"}


def test_recipe_workers_fit_the_cores_and_explicit_workers_are_kept(monkeypatch):
    # 3, not this machine's 2 cores: the cap must come from cores_per_process().
    monkeypatch.setattr(arguments, "cores_per_process", lambda: 3)
    args = parse_args(["--dataset_name", "imagenet-1k"])  # the paper's 8 workers
    assert args.workers == 3
    assert args.recipe_record()["workers"]["source"] == "paper recipe, capped at the 3 core(s) per process"
    assert parse_args(["--dataset_name", "imagenet-1k", "--workers", "6"]).workers == 6


def test_cores_are_shared_by_the_processes_of_a_launch(monkeypatch):
    monkeypatch.setattr(arguments.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert arguments.cores_per_process() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert arguments.cores_per_process() == 1


@pytest.mark.parametrize(
    "extra, images, fitted, sources",
    [
        # The paper's 256 x 2 on 10 images: one batch of 10 (even, for mixup), no accumulation.
        ([], 10, (10, 1), ("fitted to the dataset", "fitted to the dataset")),
        ([], 11, (10, 1), ("fitted to the dataset", "fitted to the dataset")),
        ([], 300, (256, 1), ("paper recipe", "fitted to the dataset")),
        ([], 512, (256, 2), ("paper recipe", "paper recipe")),
        (["--mixup", "0", "--cutmix", "0"], 11, (11, 1), ("fitted to the dataset", "fitted to the dataset")),
        # An explicit value is kept: the plan then says which flag to lower.
        (["--batch_size", "64"], 40, (64, 2), ("command line", "paper recipe")),
        (["--grad_accum_steps", "2"], 40, (20, 2), ("fitted to the dataset", "command line")),
    ],
)
def test_a_recipe_batch_larger_than_the_data_is_fitted_to_it(extra, images, fitted, sources):
    config = parse_args(["--dataset_name", "imagenet-1k", *extra])
    resolved = fitted_to_dataset(config, images)
    assert (resolved.batch_size, resolved.grad_accum_steps) == fitted
    recipe = resolved.recipe_record()
    assert (recipe["batch_size"]["source"], recipe["grad_accum_steps"]["source"]) == sources
    assert (config.batch_size, config.grad_accum_steps) == (256 if "--batch_size" not in extra else 64, 2)  # as it was
    assert fitted_to_dataset(config, None) is config  # a stream: no length


def test_what_the_machine_cannot_run_is_resolved_as_off(monkeypatch):
    paper = ["--dataset_name", "imagenet-1k"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = parse_args(paper)
    assert (config.amp, config.tf32, config.cudnn_benchmark, config.mixed_precision) == (False, False, False, "no")
    assert config.recipe_record()["amp"] == {"value": False, "source": "off: no GPU on this machine"}
    assert parse_args([*paper, "--mixed_precision", "bf16"]).mixed_precision == "bf16"  # bf16 autocast runs on CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = parse_args(paper)
    assert (config.amp, config.tf32, config.mixed_precision) == (True, True, "fp16")  # timm's float16 --amp
    assert config.recipe_record()["amp"] == {"value": True, "source": "paper recipe"}


def test_the_configuration_is_frozen_and_a_fitted_batch_is_a_new_one():
    config = parse_args(["--dataset_name", "imagenet-1k"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1
    fitted = fitted_to_dataset(config, 10)
    assert fitted is not config and (config.batch_size, fitted.batch_size) == (256, 10)
    assert config.sources["batch_size"] == "paper recipe" and fitted.sources["batch_size"] == "fitted to the dataset"


def test_aa_none_turns_randaugment_off():
    assert parse_args(["--dataset_name", "x", "--aa", "none"]).aa is None
    assert parse_args(["--dataset_name", "x"]).aa == "rand-m9-mstd0.5-inc1"
