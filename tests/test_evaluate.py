"""`evaluate`: the same number, image by image, as the run's own evaluation, as `pipeline` and as timm's own
transform and model; several models side by side; results files; bad input in one line."""

import csv
import json
import shutil

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from script_runs import HANG_S, TWO_PROCESSES, run_command, run_script
from timm.data import create_transform, resolve_data_config
from timm.models import save_for_hf
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor
from transformers import pipeline as transformers_pipeline

from hf_vit_reduction.conversion.convert import main as convert
from hf_vit_reduction.evaluation.evaluate import main as evaluate
from hf_vit_reduction.study.reduction_quality import digits_sized_timm_vit
from hf_vit_reduction.training import engine
from hf_vit_reduction.training.data import load_digits

DIGITS = [str(d) for d in range(10)]
HALF = (0.5, 0.5, 0.5)
COUNT = 37  # an odd share of the digits' validation split, so that a batch of 16 is left partly full
FAST = ["--max_eval_samples", str(COUNT), "--workers", "0", "--eval_batch_size", "16"]


@pytest.fixture(scope="module")
def digits():
    """The images and labels every command scores: the first COUNT of the digits' validation split."""
    split = load_digits()["validation"].select(range(COUNT))
    return [image.convert("RGB") for image in split["image"]], list(split["label"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny training run on the digits (two updates), made in this process."""
    out = tmp_path_factory.mktemp("run") / "run"
    engine.main(
        [
            *("--output_dir", str(out), "--max_train_steps", "2", "--max_train_samples", "64"),
            *("--max_eval_samples", str(COUNT), "--workers", "0", "--batch_size", "32", "--report_to", "none"),
        ]
    )
    return out


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    """A Transformers ViT classifier of the digits, saved with Transformers' own ViT image processor."""
    out = tmp_path_factory.mktemp("vit")
    torch.manual_seed(1)
    config = ViTConfig(
        image_size=32,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(DIGITS)),
        label2id={name: i for i, name in enumerate(DIGITS)},
    )
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def timm_dir(tmp_path_factory):
    """A digits-sized timm ViT saved by timm, with a 0.9 centre crop and bilinear resize in its pretrained_cfg."""
    out = tmp_path_factory.mktemp("timm") / "timm-vit"
    save_for_hf(
        digits_sized_timm_vit(seed=2),
        out,
        model_config={"label_names": DIGITS},
        data_config={"crop_pct": 0.9, "interpolation": "bilinear"},
        safe_serialization=True,
    )
    return out


def timm_evaluation_of(run_dir):
    """The run's evaluation transform, as timm builds it from the recipe in args.json."""
    recipe = {key: entry["value"] for key, entry in json.loads((run_dir / "args.json").read_text())["recipe"].items()}
    size = json.loads((run_dir / "config.json").read_text())["image_size"]
    return create_transform(
        input_size=size,
        is_training=False,
        crop_pct=recipe["crop_pct"],
        interpolation=recipe["interpolation"],
        mean=HALF,
        std=HALF,
    )


def logits_of(model, transform, images) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.stack([transform(image) for image in images]))
    return getattr(logits, "logits", logits)


def top1(model, transform, images) -> list[int]:
    return logits_of(model, transform, images).argmax(-1).tolist()


def mean_loss(model, transform, images, labels) -> float:
    """The mean cross-entropy: unlike a barely trained model's top-1, it moves with any change of the pixels."""
    return torch.nn.functional.cross_entropy(logits_of(model, transform, images), torch.tensor(labels)).item()


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_a_run_folder_scores_what_its_own_final_evaluation_did(run_dir, digits):
    images, labels = digits
    model = AutoModelForImageClassification.from_pretrained(run_dir).eval()
    expected = top1(model, timm_evaluation_of(run_dir), images)
    results = json.loads((run_dir / "results.json").read_text())
    # These are the predictions the run scored: its own top-1, to the last digit.
    assert 100 * sum(p == y for p, y in zip(expected, labels)) / COUNT == pytest.approx(results["final_top1"])
    (row,) = evaluate([str(run_dir), *FAST])
    assert row["predictions"] == expected
    assert row["labels"] == labels
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert row["loss"] == pytest.approx(history[-1]["loss"], rel=1e-5)
    assert row["loss"] == pytest.approx(mean_loss(model, timm_evaluation_of(run_dir), images, labels), rel=1e-5)
    assert row["top1"] == pytest.approx(results["final_top1"]) and row["top5"] == pytest.approx(results["final_top5"])
    assert row["run_top1"] == results["final_top1"] and row["images"] == COUNT and row["agreement"] == 100


@pytest.mark.parametrize("model", ["run_dir", "vit_dir"])
def test_pipeline_predicts_the_top1_that_evaluate_scored(model, request, digits, tmp_path):
    folder = request.getfixturevalue(model)
    images, _ = digits
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i:02d}.png")  # lossless: the pipeline reads the pixels evaluate read
    classifier = transformers_pipeline("image-classification", model=str(folder))
    predicted = [result[0]["label"] for result in classifier([str(tmp_path / f"{i:02d}.png") for i in range(COUNT)])]
    (row,) = evaluate([str(folder), *FAST])
    assert [DIGITS[p] for p in row["predictions"]] == predicted


def test_a_timm_model_scores_as_timms_own_transform_and_model(timm_dir, digits):
    images, labels = digits
    model = timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()
    config = resolve_data_config({}, model=model)
    assert config["crop_pct"] == 0.9 and config["interpolation"] == "bilinear"
    expected = top1(model, create_transform(**config), images)
    (row,) = evaluate([str(timm_dir), *FAST])
    assert row["predictions"] == expected
    assert row["loss"] == pytest.approx(mean_loss(model, create_transform(**config), images, labels), rel=1e-5)
    assert row["top1"] == pytest.approx(100 * sum(p == y for p, y in zip(expected, labels)) / COUNT)
    assert row["kind"] == "timm vit_base_patch16_224" and row["gmacs_convention"] == "flop_counter"
    assert row["parameters"] == sum(p.numel() for p in model.parameters())
    # By hand: 64 patches of 4x4x3 embedded in 64; per block over 65 tokens, qkv, projection, the MLP (256) and
    # attention's two products; the head.
    tokens, width = 65, 64
    block = tokens * width * (3 * width + width + 2 * 256) + 2 * tokens * tokens * width
    assert row["gmacs"] * 1e9 == pytest.approx(64 * 48 * width + 4 * block + width * 10)


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_four_kinds_side_by_side_with_their_agreement(run_dir, vit_dir, timm_dir, digits, tmp_path, monkeypatch):
    images, labels = digits
    # A Hub id in the local cache, laid out as a download leaves it.
    repo = tmp_path / "hub" / "models--someone--tiny-digits"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(vit_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    # A Transformers ViT converted to a ViTReduced folder (saved with its processor, in timm's terms).
    convert(["--from", "transformers", "--input", str(vit_dir), "--output_dir", str(tmp_path / "converted")])
    names = [str(run_dir), str(tmp_path / "converted"), str(timm_dir), "someone/tiny-digits"]
    results = tmp_path / "scores.json"
    rows = evaluate([*names, *FAST, "--results_file", str(results)])

    vit = AutoModelForImageClassification.from_pretrained(vit_dir).eval()
    processor = ViTImageProcessor.from_pretrained(vit_dir)
    vit_top1 = top1(vit, lambda image: processor(image, return_tensors="pt").pixel_values[0], images)
    timm_model = timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()
    expected = [
        top1(AutoModelForImageClassification.from_pretrained(run_dir).eval(), timm_evaluation_of(run_dir), images),
        vit_top1,  # the conversion keeps the ViT's function
        top1(timm_model, create_transform(**resolve_data_config({}, model=timm_model)), images),
        vit_top1,
    ]
    assert [row["predictions"] for row in rows] == expected
    for row, predicted in zip(rows, expected):
        assert row["agreement"] == pytest.approx(100 * sum(a == b for a, b in zip(expected[0], predicted)) / COUNT)
        assert row["top1"] == pytest.approx(100 * sum(p == y for p, y in zip(predicted, labels)) / COUNT)
    saved = json.loads(results.read_text())
    assert [row["model"] for row in saved] == names
    assert [row["top1"] for row in saved] == [row["top1"] for row in rows]
    assert saved[0]["parameters"] == AutoModelForImageClassification.from_pretrained(run_dir).num_parameters()
    assert saved[3]["parameters"] == vit.num_parameters()
    assert {row["kind"] for row in saved} == {
        "ViTReduced (baseline)",
        "timm vit_base_patch16_224",
        "Transformers ViTForImageClassification",
    }


def test_results_as_csv_and_the_table_on_stdout(run_dir, vit_dir, tmp_path, capsys):
    results = tmp_path / "scores.csv"
    rows = evaluate([str(run_dir), str(vit_dir), *FAST, "--results_file", str(results)])
    with results.open() as file:
        saved = list(csv.DictReader(file))
    assert [row["model"] for row in saved] == [str(run_dir), str(vit_dir)]
    assert [float(row["top5"]) for row in saved] == pytest.approx([row["top5"] for row in rows])
    out = capsys.readouterr().out
    assert f"| {run_dir} | ViTReduced (baseline) | {rows[0]['top1']:.2f} |" in out
    assert "labels matched by name" in out and "batch 16" in out


def test_ignore_label_names_scores_by_index_and_says_so(vit_dir, tmp_path, digits, capsys):
    _, labels = digits
    model = ViTForImageClassification.from_pretrained(vit_dir)
    renamed = tmp_path / "letters"
    model.config.id2label = dict(enumerate("abcdefghij"))
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    model.save_pretrained(renamed)
    ViTImageProcessor.from_pretrained(vit_dir).save_pretrained(renamed)
    with pytest.raises(SystemExit) as error:
        evaluate([str(renamed), *FAST])
    message = str(error.value)
    assert message.startswith("error: the labels of model") and "'0', '1'" in message
    assert "--ignore_label_names" in message and "\n" not in message
    (row,) = evaluate([str(renamed), *FAST, "--ignore_label_names"])
    (by_name,) = evaluate([str(vit_dir), *FAST])
    assert row["predictions"] == by_name["predictions"] and row["labels"] == labels
    assert "labels matched by index" in capsys.readouterr().out


def test_unreadable_images_are_counted_and_left_out(run_dir, tmp_path):
    folder = tmp_path / "validation"
    for name, shade in (("3", 40), ("7", 200)):
        (folder / name).mkdir(parents=True)
        Image.new("L", (8, 8), shade).save(folder / name / "good.png")
    (folder / "7" / "broken.png").write_bytes(b"not a png")
    (row,) = evaluate([str(run_dir), "--validation_dir", str(folder), "--workers", "0"])
    assert row["images"] == 2 and row["bad_images"] == 1
    with pytest.raises(SystemExit) as stop:
        evaluate([str(run_dir), "--validation_dir", str(folder), "--workers", "1", "--on_bad_image", "error"])
    assert str(stop.value.code).startswith(f"error: cannot read image {folder / '7' / 'broken.png'}: cannot identify")
    assert "\n" not in str(stop.value.code)


def _broken_folder(root):
    for name in ("3", "7"):
        (root / name).mkdir(parents=True)
        (root / name / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{tmp}/absent"], "model {tmp}/absent does not exist: it is neither a local folder nor a Hub id"),
        (["org/absent"], "model 'org/absent' is not in the local Hub cache"),
        (["{tmp}/not_classifier"], "is a 'gpt2' model, not an image classifier"),
        (["timm:vit_tiny_patch16_225"], "'vit_tiny_patch16_225' is not a timm model name; close names"),
        (["timm:test_vit3.r160_in1k"], "timm's 'timm/test_vit3.r160_in1k' is not in the local Hub cache"),
        (["timm:test_vit3.nope"], "timm has no pretrained weights for the tag 'nope' of 'test_vit3'; its tags"),
        (["{run}", "--validation_dir", "{tmp}/broken"], "none of the 2 images of the validation split"),
        (["{run}", "--results_file", "{tmp}/nowhere/r.json"], "the folder '{tmp}/nowhere' does not exist"),
        (["{run}", "--results_file", "{tmp}/r.txt"], "must end in .json or .csv"),
        (["{run}", "--max_evals_samples", "3"], "unrecognized arguments: --max_evals_samples 3"),
    ],
)
def test_bad_input_ends_in_one_error_line(arguments, message, run_dir, tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(tmp_path / "not_classifier")
    _broken_folder(tmp_path / "broken")
    arguments = [a.format(tmp=tmp_path, run=run_dir) for a in arguments]
    with pytest.raises(SystemExit) as error:
        evaluate(arguments)
    text = str(error.value) if error.value.code not in (2,) else capsys.readouterr().err
    assert text.strip().startswith("error: ") and "\n" not in text.strip()
    assert message.format(tmp=tmp_path) in text


def test_labels_are_matched_by_name_whatever_the_models_order(vit_dir, tmp_path):
    # The same classifier with its classes listed in reverse: every image has the same predicted name and score.
    model = ViTForImageClassification.from_pretrained(vit_dir)
    order = list(reversed(range(10)))
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order])
        model.classifier.bias.copy_(model.classifier.bias[order])
    model.config.id2label = {i: DIGITS[j] for i, j in enumerate(order)}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    reversed_dir = tmp_path / "reversed"
    model.save_pretrained(reversed_dir)
    ViTImageProcessor.from_pretrained(vit_dir).save_pretrained(reversed_dir)
    original, reversed_row = evaluate([str(vit_dir), str(reversed_dir), *FAST])
    assert reversed_row["predictions"] == [order[p] for p in original["predictions"]]
    assert reversed_row["agreement"] == 100
    for key in ("top1", "top5", "loss"):
        assert reversed_row[key] == pytest.approx(original[key], rel=1e-5)


@pytest.mark.slow  # two processes under accelerate launch
def test_under_accelerate_launch_every_image_is_counted_once(run_dir, vit_dir, tmp_path):
    results = tmp_path / "two.json"
    # 37 images in batches of 4 on two processes: the last batch is padded, and the padding must not count.
    command = [*TWO_PROCESSES, "-m", "hf_vit_reduction", "evaluate", str(run_dir), str(vit_dir)]
    finished = run_command([*command, *FAST[:-1], "4", "--results_file", str(results)], timeout=HANG_S)
    assert finished.returncode == 0, finished.stderr[-3000:]
    two = json.loads(results.read_text())
    one = evaluate([str(run_dir), str(vit_dir), *FAST])
    for ours, single in zip(two, one):
        assert ours["images"] == COUNT and ours["batch_size"] == 8 and ours["device"].startswith("2 x ")
        for key in ("top1", "top5", "agreement"):
            assert ours[key] == pytest.approx(single[key]), key
        assert ours["loss"] == pytest.approx(single["loss"], rel=1e-5)


@pytest.mark.slow  # a paper-recipe training run in a subprocess
def test_a_paper_recipe_run_with_its_0_9_crop_scores_as_its_run_pipeline_and_timm(tmp_path, digits):
    images, labels = digits
    out = tmp_path / "paper"
    arguments = ["--recipe", "paper", "--model_size", "digits", "--image_size", "48", "--output_dir", str(out)]
    arguments += ["--max_train_steps", "2", "--batch_size", "8", "--max_eval_samples", str(COUNT), "--workers", "0"]
    finished = run_script([*arguments, "--report_to", "none"], timeout=HANG_S)
    assert finished.returncode == 0, finished.stderr[-3000:]
    evaluation = timm_evaluation_of(out)
    assert json.loads((out / "args.json").read_text())["recipe"]["crop_pct"]["value"] == 0.9
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    expected = top1(model, evaluation, images)
    results = json.loads((out / "results.json").read_text())
    assert 100 * sum(p == y for p, y in zip(expected, labels)) / COUNT == pytest.approx(results["final_top1"])
    (row,) = evaluate([str(out), *FAST])
    assert row["predictions"] == expected and row["top1"] == pytest.approx(results["final_top1"])
    assert row["loss"] == pytest.approx(mean_loss(model, evaluation, images, labels), rel=1e-5)
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i:02d}.png")
    classifier = transformers_pipeline("image-classification", model=str(out))
    predicted = [result[0]["label"] for result in classifier([str(tmp_path / f"{i:02d}.png") for i in range(COUNT)])]
    assert [DIGITS[p] for p in row["predictions"]] == predicted


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_a_timm_name_with_its_weights_in_the_local_cache(tmp_path, monkeypatch, digits, capsys):
    images, labels = digits
    # timm's pretrained weights of a registry name, laid out in the Hub cache as a download leaves them.
    torch.manual_seed(3)
    weights = timm.create_model("test_vit.r160_in1k", pretrained=False).state_dict()
    snapshot = tmp_path / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / ("ab" * 20)
    snapshot.mkdir(parents=True)
    save_file(weights, snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("ab" * 20)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    # ImageNet's 1,000 classes are not the digits': by name it is refused, by index class i scores digit i.
    with pytest.raises(SystemExit) as error:
        evaluate(["timm:test_vit.r160_in1k", *FAST])
    assert str(error.value).startswith("error: the labels of model 'timm:test_vit.r160_in1k' are not the dataset's")
    (row,) = evaluate(["timm:test_vit.r160_in1k", *FAST, "--ignore_label_names"])
    model = timm.create_model("test_vit.r160_in1k", pretrained=True).eval()
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 160, 160) and config["crop_pct"] == 0.95
    assert row["predictions"] == top1(model, create_transform(**config), images)
    assert row["loss"] == pytest.approx(mean_loss(model, create_transform(**config), images, labels), rel=1e-5)
    assert "labels matched by index" in capsys.readouterr().out


def test_a_timm_imagenet_head_is_labelled_as_conversion_labels_it(tmp_path):
    """One reading of a timm model's labels: evaluate matches by the names convert writes into id2label (ImageNet's
    descriptions, as Transformers' ImageNet classifiers and their pipeline output name the classes)."""
    from hf_vit_reduction.evaluation.sources import load_classifier

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    save_for_hf(model, tmp_path / "timm", model_args={"img_size": 32, "patch_size": 8, "depth": 1})
    convert(["--from", "timm", "--input", str(tmp_path / "timm"), "--output_dir", str(tmp_path / "converted")])
    converted = AutoModelForImageClassification.from_pretrained(tmp_path / "converted").config.id2label
    classifier = load_classifier(str(tmp_path / "timm"), device=torch.device("cpu"))
    assert classifier.label_names == [converted[i] for i in range(1000)]
    assert classifier.label_names[0] == "tench, Tinca tinca" and classifier.label_names[134] == "crane (n02012849)"
