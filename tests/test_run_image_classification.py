"""End-to-end runs of run_image_classification.py in real processes (one, and two under accelerate launch)."""

import json
import logging
import time

import pytest
import torch
from image_folders import oversized_png, truncated_jpeg, write_folder
from PIL import Image
from script_runs import HANG_S, ONE_PROCESS, TWO_PROCESSES, import_script, run_script
from transformers import pipeline

from hf_vit_reduction import REDUCTION_STRATEGIES, ViTReducedForImageClassification
from hf_vit_reduction.training import engine
from hf_vit_reduction.training.arguments import parse_args

SMOKE = ["--max_train_samples", "256", "--max_eval_samples", "37", "--workers", "0", "--batch_size", "32"]


def run(args, launcher=ONE_PROCESS):
    return run_script(args, launcher, timeout=HANG_S)


@pytest.mark.slow
def test_single_process_run_writes_results_models_and_curves(tmp_path):
    out = tmp_path / "run"
    token = "hf_test_token_that_must_not_leak_123"
    started = time.time()
    result = run(
        [
            "--strategy",
            "grouped",
            "--output_dir",
            str(out),
            "--max_train_steps",
            "12",
            "--eval_every",
            "1",
            "--hub_token",
            token,
            *SMOKE,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for key in ("final_top1", "final_top5", "peak_top1", "peak_epoch", "delta_peak_final"):
        assert isinstance(results[key], (int, float)), key
    assert 0 <= results["final_top1"] <= 100 and results["delta_peak_final"] >= 0
    assert results["strategy"] == "grouped" and results["reported"] == "ema"
    assert results["steps"] == 12 and results["eval_samples"] == 37 and results["num_processes"] == 1
    assert results["parameters"] == ViTReducedForImageClassification.from_pretrained(out).num_parameters()
    assert 0 < results["wall_time_s"] < time.time() - started
    assert results["train_images_per_s"] == pytest.approx(12 * 32 / results["wall_time_s"])
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == list(range(results["epochs"]))
    assert history[-1]["top1"] == results["final_top1"] == history[-1]["ema_top1"]
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert list(out.glob("**/events.out.tfevents.*")), "TensorBoard logs"

    best = ViTReducedForImageClassification.from_pretrained(out / "best_model")
    assert best.config.reduction_strategy == "grouped" and best.config.id2label[3] == "3"
    classifier = pipeline("image-classification", model=str(out))
    prediction = classifier(Image.new("L", (8, 8), 128), top_k=2)
    assert len(prediction) == 2 and prediction[0]["label"] in [str(d) for d in range(10)]

    saved_args = json.loads((out / "args.json").read_text())
    assert "hub_token" not in saved_args
    assert saved_args["recipe"]["lr"] == {"value": 2e-3, "source": "digits recipe"}
    assert saved_args["recipe"]["batch_size"] == {"value": 32, "source": "command line"}
    leaked = [p for p in out.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaked == []
    assert token not in result.stdout + result.stderr


@pytest.mark.slow
def test_embedded_digits_learn_in_a_short_run(tmp_path):
    # The CI-sized version of the README's figure: the default recipe, shortened to 12 epochs at 16 px.
    out = tmp_path / "digits"
    result = run(
        [
            "--strategy",
            "shallow",
            "--output_dir",
            str(out),
            "--epochs",
            "12",
            "--image_size",
            "16",
            "--lr",
            "3e-3",
            "--eval_every",
            "4",
            "--report_to",
            "none",
            "--workers",
            "0",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["eval_samples"] == 360
    assert results["peak_top1"] >= 50.0, results


@pytest.mark.slow
@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_two_process_cpu_run(tmp_path, strategy):
    out = tmp_path / strategy
    result = run(
        ["--strategy", strategy, "--output_dir", str(out), "--max_train_steps", "3", "--report_to", "none", *SMOKE],
        launcher=TWO_PROCESSES,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2
    checksums = results["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # identical weights on both ranks
    assert results["eval_samples"] == 37  # 37 over 2 ranks: the padded duplicate is not counted
    # The header's three lines and one line per evaluation for the whole run (from one process), no line per
    # checkpoint (one was written), none of Accelerate's INFO lines.
    lines = result.stderr.splitlines()
    assert sum(" INFO model: " in line for line in lines) == 1
    assert sum(" INFO epoch 0: top-1 " in line for line in lines) == 1
    assert not any(" INFO checkpoint " in line for line in lines) and (out / "checkpoints" / "step_00000003").is_dir()
    assert not [line for line in lines if "Saving current state" in line or "saved in" in line]
    assert "Writing model shards" not in result.stderr
    model = ViTReducedForImageClassification.from_pretrained(out)
    assert model.config.reduction_strategy == strategy


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--train_dir", "/nonexistent/train"], "train_dir='/nonexistent/train' does not exist"),
        (["--dataset_name", "{tmp}/ds", "--validation_split", "dev"], "validation_split='dev' does not exist"),
    ],
)
def test_bad_data_fails_before_training(tmp_path, args, message):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"image": [Image.new("RGB", (4, 4))] * 2, "label": [0, 1]}
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=features)).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    result = run([*(a.format(tmp=tmp_path) for a in args), "--output_dir", str(out), "--report_to", "none"])
    assert result.returncode != 0
    assert message in result.stderr
    assert not out.exists() or not any(out.iterdir())
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_model_name_or_path_starts_from_a_saved_model(tmp_path, make_model):
    start = make_model("thin", id2label={d: str(d) for d in range(10)})  # the digits' labels
    start.save_pretrained(tmp_path / "start")
    out = tmp_path / "out"
    result = run(
        [
            "--model_name_or_path",
            str(tmp_path / "start"),
            "--output_dir",
            str(out),
            "--max_train_steps",
            "2",
            "--report_to",
            "none",
            *SMOKE,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trained = ViTReducedForImageClassification.from_pretrained(out)
    assert trained.config.reduction_strategy == "thin"
    assert not torch.equal(trained.vit.layers[0].mlp.fc1.weight, start.vit.layers[0].mlp.fc1.weight)
    wrong = run(
        [
            "--model_name_or_path",
            str(tmp_path / "start"),
            "--strategy",
            "grouped",
            "--output_dir",
            str(tmp_path / "wrong"),
            "--report_to",
            "none",
            *SMOKE,
        ]
    )
    assert wrong.returncode != 0 and "reduction_strategy='grouped' but the checkpoint has 'thin'" in wrong.stderr


@pytest.mark.slow
def test_streaming_run(tmp_path):
    for split, per_class in (("train", 40), ("validation", 5)):
        for label in ("a", "b"):
            (tmp_path / "ds" / split / label).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (12, 12), (200 * (label == "a"), i, 0)).save(
                    tmp_path / "ds" / split / label / f"{i}.png"
                )
    out = tmp_path / "out"
    result = run(
        [
            "--dataset_name",
            str(tmp_path / "ds"),
            "--streaming",
            "--max_train_steps",
            "3",
            "--model_size",
            "digits",
            "--image_size",
            "16",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--workers",
            "0",
            "--batch_size",
            "8",
            "--grad_accum_steps",
            "1",
            "--no-model-ema",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3 and results["eval_samples"] == 10 and results["reported"] == "model"


@pytest.mark.slow
def test_loop_benchmark_mode(tmp_path):
    out = tmp_path / "bench"
    result = run(
        [
            "--strategy",
            "grouped",
            "--output_dir",
            str(out),
            "--benchmark_loop",
            "--max_train_steps",
            "8",
            "--benchmark_warmup",
            "3",
            "--report_to",
            "none",
            *SMOKE,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "loop_benchmark.json").read_text())
    assert report["timed_updates"] == 5 and report["batch_size"] == 32
    assert report["loop_images_per_s"] > 0 and report["bare_step_images_per_s"] > 0
    assert report["loop_vs_bare"] == pytest.approx(report["loop_images_per_s"] / report["bare_step_images_per_s"])
    before, after = report["bare_step_images_per_s_before_and_after"]
    assert report["bare_step_images_per_s"] == pytest.approx((before + after) / 2)
    assert not (out / "results.json").exists()


# In-process runs: main(argv) in this test's process, on tiny inputs.
@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_a_dozen_images_train_with_the_recipe_batch_fitted_to_them(tmp_path, caplog):
    write_folder(tmp_path / "train", per_class=6)
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    # The paper's recipe (256 x 2 images per update); only the model is made small and the run short.
    small = ("--model_size", "digits", "--image_size", "8", "--epochs", "2", "--workers", "0", "--report_to", "none")
    import_script().main(["--train_dir", str(tmp_path / "train"), "--output_dir", str(out), *small])
    # 15% of the 12 images are held out for validation: 10 train, one batch of 10 per update, one update an epoch.
    header = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model: baseline digits, ")]
    assert len(header) == 1 and header[0].endswith("; 2 updates of 10 images on 1 process(es) (fitted to the dataset)")
    recipe = json.loads((out / "args.json").read_text())["recipe"]
    assert recipe["batch_size"] == {"value": 10, "source": "fitted to the dataset"}
    assert recipe["grad_accum_steps"] == {"value": 1, "source": "fitted to the dataset"}
    assert recipe["lr"] == {"value": 1e-3, "source": "paper recipe"}
    results = json.loads((out / "results.json").read_text())
    assert (results["steps"], results["epochs"], results["eval_samples"]) == (2, 2, 2)
    assert results["train_images_per_s"] * results["wall_time_s"] == pytest.approx(20)


def test_an_explicit_batch_too_large_for_the_data_says_which_flags_to_lower(tmp_path):
    write_folder(tmp_path / "train", per_class=6)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        import_script().main(
            [
                "--train_dir",
                str(tmp_path / "train"),
                "--batch_size",
                "16",
                "--output_dir",
                str(out),
                "--report_to",
                "none",
            ]
        )
    message = str(stop.value.code)
    assert message.startswith("error: one update takes 32 training images per process (--batch_size 16 x ")
    assert message.endswith("lower --batch_size or --grad_accum_steps so that their product is at most 10")
    assert not out.exists()


@pytest.mark.parametrize("case", ["train unreadable", "validation unreadable", "one class", "output_dir a file"])
def test_data_that_cannot_train_a_classifier_is_one_error_line_before_training(tmp_path, case):
    write_folder(tmp_path / "train", classes=("cat",) if case == "one class" else ("cat", "dog"), per_class=4)
    write_folder(tmp_path / "val", per_class=2)
    broken = {"train unreadable": "train", "validation unreadable": "val"}.get(case)
    if broken:
        for path in (tmp_path / broken).rglob("*.png"):
            path.write_bytes(b"not an image")
    out = tmp_path / "out"
    if case == "output_dir a file":
        out.write_text("my notes")
    argv = ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val"), "--workers", "0"]
    with pytest.raises(SystemExit) as stop:
        import_script().main([*argv, "--model_size", "digits", "--output_dir", str(out), "--report_to", "none"])
    message = str(stop.value.code)
    expected = {
        "train unreadable": f"error: none of the 8 images of the train split of imagefolder:{tmp_path / 'train'} can",
        "validation unreadable": f"error: none of the 4 images of the validation split of imagefolder:{tmp_path}",
        "one class": "error: a classifier needs at least two classes, but train_dir=",
        "output_dir a file": f"error: --output_dir={str(out)!r} is a file; allowed: a folder",
    }[case]
    assert message.startswith(expected) and "\n" not in message
    assert out.is_file() if case == "output_dir a file" else not out.exists()


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_a_tiny_folder_trains_with_the_flags_lowered_and_counts_each_bad_file_once(tmp_path):
    write_folder(tmp_path / "train", per_class=7)
    write_folder(tmp_path / "val", per_class=2)
    truncated_jpeg(tmp_path / "train" / "cat" / "broken.jpg")
    (tmp_path / "train" / "dog" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    import_script().main(
        [
            *("--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")),
            *("--batch_size", "4", "--grad_accum_steps", "1", "--epochs", "2", "--mixup", "0", "--cutmix", "0"),
            *("--model_size", "digits", "--image_size", "8", "--workers", "0", "--report_to", "none"),
            *("--output_dir", str(out)),
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert (results["steps"], results["epochs"], results["eval_samples"]) == (8, 2, 4)
    assert results["bad_train_images"] == 2  # two files, each drawn once per epoch
    # 16 files a epoch, 2 of them unreadable: 2 x 14 images trained on.
    assert results["train_images_per_s"] * results["wall_time_s"] == pytest.approx(28)


TINY_FOLDER_RUN = (
    *("--batch_size", "4", "--grad_accum_steps", "1", "--epochs", "2", "--mixup", "0", "--cutmix", "0"),
    *("--model_size", "digits", "--image_size", "8", "--report_to", "none"),
)


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_an_image_over_pillow_s_pixel_limit_is_skipped_and_counted(tmp_path):
    assert Image.MAX_IMAGE_PIXELS < 200_000_000  # Pillow's decompression-bomb limit, which the file exceeds
    write_folder(tmp_path / "train", per_class=7)
    write_folder(tmp_path / "val", per_class=2)
    Image.new("RGB", (12, 12)).save(tmp_path / "train" / "cat" / "7.png")
    oversized_png(tmp_path / "train" / "dog" / "huge.png")
    out = tmp_path / "out"
    import_script().main(
        [
            *("--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")),
            *TINY_FOLDER_RUN,
            *("--workers", "0", "--output_dir", str(out)),
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["bad_train_images"] == 1 and results["steps"] == 8  # 16 files an epoch, 15 readable
    assert results["train_images_per_s"] * results["wall_time_s"] == pytest.approx(30)


@pytest.mark.parametrize("bad, workers", [("truncated", 0), ("truncated", 1), ("oversized", 1)])
def test_on_bad_image_error_ends_a_run_that_draws_an_unreadable_image_in_one_line(tmp_path, bad, workers):
    write_folder(tmp_path / "train", per_class=7)
    write_folder(tmp_path / "val", per_class=2)
    broken = tmp_path / "train" / "cat" / ("broken.jpg" if bad == "truncated" else "huge.png")
    (truncated_jpeg if bad == "truncated" else oversized_png)(broken)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        import_script().main(
            [
                *("--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")),
                *TINY_FOLDER_RUN,
                *("--workers", str(workers), "--on_bad_image", "error", "--output_dir", str(out)),
            ]
        )
    message = str(stop.value.code)
    cause = "image file is truncated" if bad == "truncated" else "exceeds limit of 178956970 pixels"
    assert message.startswith(f"error: cannot read image {broken}: ") and cause in message, message
    assert "replace or remove the file (or pass --on_bad_image skip), then " in message  # and how to go on
    assert "\n" not in message and not (out / "results.json").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--model_name_or_path", "/no/such/model"],
            "error: --model_name_or_path /no/such/model does not exist: it is neither a local folder nor a Hub id",
        ),
        (["--model_name_or_path", "someone/not-cached"], "'someone/not-cached' is not in the local Hub cache"),
        (["--dataset_name", "someone/not-cached"], "error: dataset_name='someone/not-cached' is not a local dataset"),
    ],
)
def test_missing_models_and_uncached_sources_are_one_error_line(tmp_path, argv, message, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        import_script().main([*argv, "--output_dir", str(out), "--report_to", "none", "--workers", "0"])
    # A starting model is located while the flags are read (argparse's exit 2, its line on stderr).
    text = (capsys.readouterr().err if stop.value.code == 2 else str(stop.value.code)).strip()
    assert text.startswith("error: ") and message in text
    assert "\n" not in text and not out.exists()


def test_image_size_with_a_saved_model_resizes_its_position_embeddings(tmp_path, make_model):
    script = engine
    saved = make_model("shallow", id2label={d: str(d) for d in range(10)})  # 32 px, patch 4: an 8 x 8 grid
    saved.save_pretrained(tmp_path / "saved")
    args = parse_args(["--model_name_or_path", str(tmp_path / "saved"), "--image_size", "16"])
    model, _ = script.load_model(args, [str(d) for d in range(10)])
    model.eval()
    assert model.config.image_size == 16 and model.config.reduction_strategy == "shallow"
    assert model.vit.embeddings.position_embeddings.shape == (1, 1 + 4 * 4, 64)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = saved(images, interpolate_pos_encoding=True).logits
        assert torch.allclose(model(images).logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"image_size=18 is not valid .*a multiple of its patch size 4"):
        script.load_model(parse_args(["--model_name_or_path", str(tmp_path / "saved"), "--image_size", "18"]), ["a"])


@pytest.mark.slow
def test_two_processes_count_each_bad_file_once_and_the_images_each_trained_on(tmp_path):
    write_folder(tmp_path / "train", per_class=7)
    write_folder(tmp_path / "val", per_class=2)
    truncated_jpeg(tmp_path / "train" / "cat" / "broken.jpg")
    (tmp_path / "train" / "dog" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    result = run(
        [
            *("--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")),
            *("--batch_size", "4", "--grad_accum_steps", "1", "--epochs", "2", "--mixup", "0", "--cutmix", "0"),
            *("--model_size", "digits", "--image_size", "8", "--workers", "0", "--report_to", "none"),
            *("--aug_repeats", "0", "--output_dir", str(out)),
        ],
        launcher=TWO_PROCESSES,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (results["steps"], results["num_processes"]) == (4, 2)
    assert results["bad_train_images"] == 2  # each process saw one part of the files
    assert results["train_images_per_s"] * results["wall_time_s"] == pytest.approx(28)
