import pytest

from hf_vit_reduction.arguments import parse_args
from hf_vit_reduction.training import DIGITS_RECIPE, PAPER_RECIPE


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
    for key in (
        "lr",
        "weight_decay",
        "mixup",
        "cutmix",
        "smoothing",
        "aa",
        "reprob",
        "aug_repeats",
        "drop_path",
    ):
        assert getattr(args, key) == PAPER_RECIPE[key], key
    assert (args.lr, args.warmup_epochs, args.model_ema_decay, args.epochs) == (
        1e-3,
        5,
        0.9998,
        300,
    )
    assert args.strategy == "baseline" and args.model_size == "base"


def test_timm_spellings_are_aliases():
    argv = (
        "--reduction-strategy grouped --reduction-mlp-ratio 0.5 --batch-size 32 --grad-accum-steps 2 --lr 5e-4 "
        "--epochs 7 --warmup-epochs 1 --drop-path 0.2 --mixup 0.5 --cutmix 0.0 --reprob 0.0 --aa none "
        "--aug-repeats 0 --model-ema --model-ema-decay 0.99 --workers 1 --pin-mem --channels-last --seed 3 "
        "--experiment e1 --output /tmp/out1"
    )
    args = parse_args(argv.split())
    assert (
        args.strategy,
        args.reduction_mlp_ratio,
        args.batch_size,
        args.grad_accum_steps,
    ) == ("grouped", 0.5, 32, 2)
    assert (args.lr, args.epochs, args.warmup_epochs, args.drop_path) == (
        5e-4,
        7,
        1,
        0.2,
    )
    assert (args.mixup, args.cutmix, args.reprob, args.aa, args.aug_repeats) == (
        0.5,
        0.0,
        0.0,
        None,
        0,
    )
    assert (args.model_ema, args.model_ema_decay, args.workers, args.pin_mem) == (
        True,
        0.99,
        1,
        True,
    )
    assert (args.channels_last, args.seed, args.experiment, args.output_dir) == (
        True,
        3,
        "e1",
        "/tmp/out1",
    )


def test_explicit_flags_override_the_recipe():
    args = parse_args(["--epochs", "2", "--no-model-ema", "--model_size", "tiny"])
    assert (args.epochs, args.model_ema, args.model_size) == (2, False, "tiny")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strategy", "pruned"], "invalid choice: 'pruned'"),
        (
            ["--batch_size", "0"],
            "--batch_size=0 is not valid; allowed: an integer >= 1",
        ),
        (
            ["--batch_size", "33"],
            "--batch_size=33 is not valid; allowed: an even number",
        ),
        (["--lr", "-1"], "--lr=-1.0 is not valid"),
        (
            ["--smoothing", "1.5"],
            "--smoothing=1.5 is not valid; allowed: a number in [0, 1)",
        ),
        (["--model_ema_decay", "1.0"], "--model_ema_decay=1.0 is not valid"),
        (
            ["--checkpointing_steps", "often"],
            "--checkpointing_steps='often' is not valid",
        ),
        (["--streaming", "--dataset_name", "x"], "--streaming needs --max_train_steps"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
    ],
)
def test_bad_values_exit_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
