import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from card_checks import RUN_ONLY_FLAGS, check_card
from conversion_sources import transformers_vit
from huggingface_hub import ModelCard
from image_folders import write_folder
from transformers import ViTImageProcessor
from wheel_install import install_wheel

from hf_vit_reduction import REDUCTION_STRATEGIES, summarize
from hf_vit_reduction.conversion.convert import main as convert
from hf_vit_reduction.hub.model_card import (
    HYPERPARAMETER_GROUPS,
    RUN_PLUMBING,
    main,
    render_model_card,
    write_model_card,
)
from hf_vit_reduction.image_processing_vit_reduced import image_processor_for
from hf_vit_reduction.training.arguments import parse_args
from hf_vit_reduction.training.outputs import write_json
from hf_vit_reduction.training.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]

# results.json as the training script writes it (its keys; values of the shape a digits run gives).
RESULTS = {
    "final_top1": 96.38888888888889,
    "final_top5": 99.72222222222223,
    "peak_top1": 96.94444444444444,
    "peak_top5": 100.0,
    "peak_epoch": 37,
    "delta_peak_final": 0.5555555555555571,
    "strategy": "grouped",
    "seed": 42,
    "epochs": 40,
    "steps": 880,
    "wall_time_s": 135.2,
    "train_images_per_s": 425.1,
    "eval_samples": 360,
    "data": "digits (scikit-learn, embedded)",
    "reported": "ema",
    "num_processes": 1,
}


def script_args(argv: list[str], num_processes: int = 1) -> dict:
    """args.json as the training script writes it for these flags (its `build` step, without training)."""
    return json.loads(json.dumps(parse_args(argv).run_record(num_processes=num_processes)))


def run_folder(folder: Path, model, results=RESULTS, run_args=None, curves=True, crop_pct=1.0) -> Path:
    """A model folder laid out as the training script leaves its output folder."""
    model.save_pretrained(folder)
    image_size = model.config.image_size
    image_processor_for(
        image_size, crop_pct=crop_pct, interpolation="bicubic", mean=[0.5] * 3, std=[0.5] * 3
    ).save_pretrained(folder)
    run_args = run_args or {"strategy": "grouped", "lr": 0.002, "seed": 42, "output_dir": str(folder)}
    write_json(folder / "args.json", run_args)
    (folder / "results.json").write_text(json.dumps(results))
    rows = [
        {
            "epoch": 36,
            "top1": 96.1,
            "top5": 99.7,
            "ema_top1": 96.1,
            "ema_top5": 99.7,
            "model_top1": 95.0,
            "model_top5": 99.4,
        },
        {
            "epoch": 39,
            "top1": 96.38888888888889,
            "top5": 99.72222222222223,
            "ema_top1": 96.38888888888889,
            "ema_top5": 99.72222222222223,
            "model_top1": 95.83333333333333,
            "model_top5": 100.0,
        },
    ]
    (folder / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if curves:
        (folder / "training_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return folder


def test_card_of_a_training_run_carries_its_numbers(make_model, tmp_path):
    model = make_model("grouped")
    folder = run_folder(tmp_path, model)
    path = write_model_card(folder, repo_id="me/vit-grouped-digits")
    card = ModelCard.load(path)  # parses its own output
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0"
    assert data.tags == ["vision", "vit", "image-classification", "parameter-reduction", "grouped", "custom_code"]
    metrics = {result.metric_type: result for result in data.eval_results}
    assert metrics["accuracy"].metric_value == 96.39
    assert metrics["top_5_accuracy"].metric_value == 99.72
    assert metrics["accuracy"].dataset_split == "validation"
    assert data.model_name == "vit-grouped-digits"
    text = card.text
    cost = summarize(model)
    assert f"| params (M) | {cost['num_parameters'] / 1e6:.2f} ({cost['num_parameters']:,}) |" in text
    assert f"| MLP params (M) | {cost['mlp_parameters'] / 1e6:.2f} ({cost['mlp_parameters']:,}) |" in text
    assert "| strategy | grouped: 2 blocks per MLP, the shared MLP's initial weights scaled by 0.707 |" in text
    assert "| unique MLPs | 2 of 4 blocks |" in text
    assert "| final, raw weights | 95.83 | 100.00 |" in text
    assert "| final, EMA | 96.39 | 99.72 |" in text
    assert "| peak (epoch 37) | 96.94 | 100.00 |" in text
    assert (
        "Δ(P→F), the drop from the peak to the final top-1 that the paper uses as its stability figure: 0.56" in text
    )
    assert "![Training curves: losses and top-1 per epoch](training_curves.png)" in text
    assert "425 training images per second" in text
    assert "| optimization | `lr` | 0.002 | `--lr` |" in text  # an args.json without the recipe's sources
    assert "output_dir" not in text  # where the run lived on its machine
    assert 'from_pretrained("me/vit-grouped-digits", trust_remote_code=True)' in text
    assert "needs 🤗 Transformers 5 or newer" in text  # remote code fails to import in older releases
    assert "A digits model is a demo, not an ImageNet model" in text
    assert "eprint = {2512.01059}" in text


def test_card_of_a_digits_run(make_model, tmp_path):
    run_args = script_args(["--strategy", "grouped", "--output_dir", str(tmp_path)])
    folder = run_folder(tmp_path, make_model("grouped"), run_args=run_args)
    text = check_card(write_model_card(folder), folder)
    assert {result.metric_value for result in ModelCard.load(folder / "README.md").data.eval_results} == {96.39, 99.72}
    assert "| resize | shorter side to 32 px, aspect ratio kept; bicubic interpolation |" in text
    assert "| normalize | mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5) |" in text
    # The recipe once, each value with its source; the global batch computed.
    # What a machine without a GPU cannot run is recorded as off, with why.
    no_gpu = set() if torch.cuda.is_available() else {"tf32", "cudnn_benchmark"}
    for name in no_gpu:
        assert text.count(f"| `{name}` | False | off: no GPU on this machine |") == 1, name
    for name, value in RECIPES["digits"].items():
        if name not in RUN_PLUMBING and name not in no_gpu:
            shown = ", ".join(map(str, value)) if isinstance(value, tuple) else "none" if value is None else value
            assert text.count(f"| `{name}` | {shown} | digits recipe |") == 1, name
    assert "| optimization | `lr` | 0.002 | digits recipe |" in text
    assert "| global batch (per device × accumulation × processes) | 64 = 64 × 1 × 1 | computed |" in text
    assert "| `seed` | 42 | `--seed` |" in text
    assert f'from_pretrained("{folder}")' in text  # not pushed: the folder


def test_card_of_a_paper_recipe_run_on_two_processes(make_model, tmp_path):
    data = write_folder(tmp_path / "photos")
    argv = ["--strategy", "shallow", "--train_dir", str(data), "--lr", "0.0005", "--output_dir", str(tmp_path)]
    argv += ["--hub_model_id", "me/vit-shallow", "--push_to_hub", "--hub_token", "hf_never_on_a_card"]
    model = make_model("shallow", image_size=64)
    folder = run_folder(tmp_path / "run", model, run_args=script_args(argv, num_processes=2), crop_pct=0.9)
    text = check_card(write_model_card(folder, repo_id="me/vit-shallow"), folder)
    assert "| resize | shorter side to 71 px, aspect ratio kept; bicubic interpolation |" in text  # floor(64 / 0.9)
    assert "| centre crop | 64 × 64 px |" in text
    assert "| optimization | `lr` | 0.0005 | command line |" in text
    assert "| `weight_decay` | 0.05 | paper recipe |" in text
    assert "| `aa` | rand-m9-mstd0.5-inc1 | paper recipe |" in text
    assert "| `crop_pct` | 0.9 | paper recipe |" in text
    assert "| global batch (per device × accumulation × processes) | 1,024 = 256 × 2 × 2 | computed |" in text
    assert "| strategy | shallow: 0.5 of each MLP's hidden units kept |" in text
    assert 'from_pretrained("me/vit-shallow")' in text and "hub_model_id" not in text
    assert "hf_never_on_a_card" not in text


@pytest.mark.parametrize(
    "source",
    [pytest.param("timm", marks=pytest.mark.slow), "transformers"],  # timm: builds a ViT-Ti, ~10 s
)
def test_card_of_a_converted_model(tmp_path, source):
    if source == "timm":
        convert(
            [
                "--from",
                "timm",
                "--input",
                "vit_tiny_patch16_224",
                "--random_weights",  # offline: timm's architecture without its weights
                "--image_size",
                "32",
                "--output",
                str(tmp_path / "out"),
            ]
        )
    else:
        transformers_vit().save_pretrained(tmp_path / "source")
        processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        processor.save_pretrained(tmp_path / "source")
        convert(["--from", "transformers", "--input", str(tmp_path / "source"), "--output", str(tmp_path / "out")])
    folder = tmp_path / "out"
    text = check_card(folder / "README.md", folder)
    assert ModelCard.load(folder / "README.md").data.model_name == "out"  # not the staging folder's name
    assert f'from_pretrained("{folder}")' in text
    assert "## Training hyperparameters" not in text and "| source |" in text
    if source == "timm":  # timm's pretrained_cfg of vit_tiny_patch16_224: crop_pct 0.9, bicubic
        assert "| resize | shorter side to 35 px, aspect ratio kept; bicubic interpolation |" in text


def test_every_recipe_field_is_on_the_card_or_run_plumbing():
    grouped = [name for names in HYPERPARAMETER_GROUPS.values() for name in names]
    assert len(grouped) == len(set(grouped))
    for recipe in RECIPES.values():
        assert set(recipe) <= set(grouped) | set(RUN_PLUMBING)
    assert not set(RUN_ONLY_FLAGS) & set(grouped)


def test_card_never_shows_a_token(make_model, tmp_path):
    run_args = {"strategy": "grouped", "hub_token": "hf_secret_in_args", "seed": 0}
    folder = run_folder(tmp_path, make_model("grouped"), run_args=run_args)
    text = str(render_model_card(folder))
    assert "hf_secret_in_args" not in text
    assert "hub_token" not in text
    assert "| `seed` | 0 | `--seed` |" in text


def test_card_of_a_hub_dataset_names_it(make_model, tmp_path):
    run_args = {"strategy": "shallow", "dataset_name": "imagenet-1k", "validation_split": "validation"}
    results = RESULTS | {"data": "imagenet-1k", "strategy": "shallow"}
    folder = run_folder(tmp_path, make_model("shallow"), results=results, run_args=run_args, curves=False)
    card = render_model_card(folder, repo_id="me/vit-b16-shallow")
    assert card.data.datasets == ["imagenet-1k"]
    assert {result.dataset_type for result in card.data.eval_results} == {"imagenet-1k"}
    assert "training_curves.png" not in card.text
    assert "A digits model is a demo" not in card.text


@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_card_of_a_converted_model_has_no_results(make_model, tmp_path, strategy):
    model = make_model(strategy)
    model.save_pretrained(tmp_path)
    conversion = {"source": "timm vit_tiny_patch16_224", "method": f"{strategy}, prune_method=first"}
    card = render_model_card(tmp_path, conversion=conversion, base_model="google/vit-base-patch16-224")
    assert card.data.eval_results is None
    assert card.data.base_model == "google/vit-base-patch16-224"
    assert strategy in card.data.tags
    assert f"the **{strategy}** MLP strategy" in card.text
    assert "| source | timm vit_tiny_patch16_224 |" in card.text
    assert "## Results" not in card.text and "## Training hyperparameters" not in card.text
    assert ("has not been trained after the reduction" in card.text) == (strategy != "baseline")
    assert f"({model.num_parameters():,}) |" in card.text


def test_card_command(make_model, tmp_path, capsys):
    run_folder(tmp_path, make_model("grouped"))
    main([str(tmp_path), "--hub_model_id", "me/vit"])
    assert capsys.readouterr().out == f"wrote {tmp_path / 'README.md'}\n"
    assert ModelCard.load(tmp_path / "README.md").data.model_name == "vit"
    (tmp_path / "README.md").unlink()
    main([str(tmp_path), "--output_file", str(tmp_path / "card.md")])
    assert capsys.readouterr().out == f"wrote {tmp_path / 'card.md'}\n"
    assert ModelCard.load(tmp_path / "card.md").data.model_name == tmp_path.name
    assert not (tmp_path / "README.md").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["{tmp}/missing"],
            "model {tmp}/missing does not exist: it is neither a local folder nor a Hub id (org/name)",
        ),
        (["{tmp}/empty"], "{tmp}/empty holds no config.json: not a saved model folder"),
        (
            ["me/vit"],
            "model 'me/vit' is not a local folder, so it is a Hub id, and a Hub id's card needs --output_file PATH",
        ),
        (["me/vit", "--output_file", "{tmp}/no/card.md"], "--output_file '{tmp}/no/card.md' is not valid; allowed:"),
        (["me/vit", "--output_file", "{tmp}"], "--output_file '{tmp}' is not valid; allowed: a file in an existing"),
        (["me/vit", "--output_file", "{tmp}/card.md"], "model 'me/vit' is not in the local Hub cache"),
    ],
)
def test_card_command_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # empty, offline
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as refused:
        main([arg.format(tmp=tmp_path) for arg in argv])
    error = capsys.readouterr().err
    assert refused.value.code == 2 and error.startswith(f"error: {message.format(tmp=tmp_path)}")
    assert error.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]


def test_best_model_subfolder_reads_the_run_outputs_from_its_parent(make_model, tmp_path):
    run_folder(tmp_path, make_model("grouped"))
    best = tmp_path / "best_model"
    make_model("grouped").save_pretrained(best)
    card = render_model_card(best, run_dir=tmp_path)
    assert {result.metric_value for result in card.data.eval_results} == {96.39, 99.72}


@pytest.mark.slow
def test_template_is_found_when_installed_from_a_wheel(make_model, tmp_path):
    """Build a wheel of this checkout, install it into a fresh virtual environment and render a card there."""
    python = install_wheel(tmp_path) / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    folder = run_folder(tmp_path / "run", make_model("grouped"))
    render = (
        "import sys, hf_vit_reduction\n"
        "from hf_vit_reduction.hub.model_card import write_model_card\n"
        "print(hf_vit_reduction.__file__)\n"
        f"write_model_card({str(folder)!r}, repo_id='me/from-wheel')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    out = subprocess.run([python, "-c", render], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(site / "hf_vit_reduction" / "__init__.py")
    card = ModelCard.load(folder / "README.md")
    assert {result.metric_value for result in card.data.eval_results} == {96.39, 99.72}
    assert 'from_pretrained("me/from-wheel")' in card.text


def test_card_says_how_a_cut_and_recovered_model_was_made(make_model, tmp_path):
    make_model("shallow").save_pretrained(tmp_path)
    cut = {
        "source": "vit_reduced runs/teacher",
        "strategy": "shallow",
        "prune_method": "taylor",
        "share_method": "leader",
        "calibration": {"samples": 256, "seed": 0, "data": "digits (scikit-learn, embedded)"},
    }
    (tmp_path / "provenance.json").write_text(json.dumps(cut))
    text = render_model_card(tmp_path).text
    assert "## How it was made" in text
    assert (
        "- Cut from `vit_reduced runs/teacher` to `shallow` with `taylor`, calibrated on 256 training images of "
        "digits (scikit-learn, embedded) (seed 0)." in text
    )
    recovery = {
        "cut": cut,
        "recovered_from": "runs/cut",
        "distillation": {
            "teacher": "runs/teacher",
            "distillation": "soft",
            "distillation_alpha": 0.5,
            "distillation_temperature": 2.0,
        },
        "recovery_epochs": 10,
        "top1_before": 91.25,
        "top1_after": 97.5,
    }
    (tmp_path / "provenance.json").write_text(json.dumps(recovery))
    text = render_model_card(tmp_path).text
    assert "with `taylor`" in text and (
        "- Recovered from `runs/cut` for 10 epochs with soft distillation from `runs/teacher` (alpha 0.5, "
        "temperature 2.0): top-1 91.25% before, 97.50% after." in text
    )
    (tmp_path / "provenance.json").unlink()
    assert "How it was made" not in render_model_card(tmp_path).text


def test_card_of_a_distilled_deit_says_which_heads_predict_and_what_trained_them(make_model, tmp_path):
    make_model(distillation_token=True, num_register_tokens=2).save_pretrained(tmp_path)
    recovery = {
        "recovered_from": "runs/cut",
        "distillation": {
            "teacher": "runs/teacher",
            "distillation": "hard",
            "distillation_alpha": 0.5,
            "distillation_head": True,
        },
        "recovery_epochs": 1,
        "top1_before": 50.0,
        "top1_after": 60.0,
    }
    (tmp_path / "provenance.json").write_text(json.dumps(recovery))
    text = render_model_card(tmp_path).text
    assert (
        "| architecture | a distillation token and head: predictions average the class and distillation heads "
        "(DeiT); 2 register tokens |" in text
    )
    assert (
        "with hard distillation from `runs/teacher` (alpha 0.5) into the distillation head, the labels into the "
        "class head (DeiT's recipe): top-1 50.00% before, 60.00% after." in text
    )
    make_model().save_pretrained(tmp_path / "plain")
    assert "| architecture | a plain ViT (class token, GELU MLPs) |" in render_model_card(tmp_path / "plain").text
