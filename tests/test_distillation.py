import json
import math

import pytest
import torch
from test_hub import server  # noqa: F401 (a fixture)
from torchvision.transforms.functional import InterpolationMode, resize

from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification
from hf_vit_reduction.image_processing_vit_reduced import Preprocessing, image_processor_for
from hf_vit_reduction.training import engine
from hf_vit_reduction.training.arguments import parse_args
from hf_vit_reduction.training.distillation import (
    Distiller,
    hard_distillation_loss,
    load_teacher,
    soft_distillation_loss,
    student_heads,
)

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
TEACHER = torch.tensor([[1.0, 1.5, 0.0], [-2.0, 0.5, 1.0]])


def softmax(row, t):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def test_soft_loss_is_the_temperature_scaled_kl_divergence_by_hand():
    for t in (1.0, 4.0):
        kl = 0.0
        for s_row, t_row in zip(STUDENT.tolist(), TEACHER.tolist()):
            p, q = softmax(t_row, t), softmax(s_row, t)
            kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        expected = kl / 2 * t * t
        assert soft_distillation_loss(STUDENT, TEACHER, t).item() == pytest.approx(expected, rel=1e-6)


def test_hard_loss_is_cross_entropy_with_the_teachers_top_class_by_hand():
    # The teacher's top classes are 1 and 2.
    expected = -(math.log(softmax(STUDENT[0].tolist(), 1)[1]) + math.log(softmax(STUDENT[1].tolist(), 1)[2])) / 2
    assert hard_distillation_loss(STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-6)


def test_distiller_weighs_the_terms_and_never_trains_the_teacher(make_model):
    teacher, student = make_model(seed=1).train(), make_model(seed=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images = torch.randn(4, 3, 32, 32)
    logits = student(pixel_values=images).logits
    base = torch.tensor(0.7, requires_grad=True)
    distiller = Distiller(teacher, mode="soft", alpha=0.25, temperature=2.0)
    loss = distiller(base, logits, images)
    with torch.no_grad():
        teacher_logits = teacher.eval()(pixel_values=images).logits
    expected = 0.75 * 0.7 + 0.25 * soft_distillation_loss(logits, teacher_logits, 2.0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


DIGITS = [str(d) for d in range(10)]
HALF = Preprocessing(32, 1.0, "center", "bicubic", (0.5,) * 3, (0.5,) * 3)


def test_a_teacher_with_the_labels_in_another_order_predicts_what_it_did(tmp_path, make_model):
    shuffled = [DIGITS[i] for i in (3, 0, 9, 1, 8, 2, 7, 4, 6, 5)]
    saved = make_model(seed=1, id2label=dict(enumerate(shuffled)))
    saved.save_pretrained(tmp_path / "teacher")
    HALF.image_processor().save_pretrained(tmp_path / "teacher")
    teacher, _, labels = load_teacher(str(tmp_path / "teacher"), label_names=DIGITS, preprocessing=HALF, device="cpu")
    assert labels == {"labels": "permuted", "model_labels": shuffled}
    assert [teacher.config.id2label[i] for i in range(10)] == DIGITS
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before, after = saved(pixel_values=images).logits, teacher(pixel_values=images).logits
    # Each class's score, by name, is what the saved teacher gave it.
    for index, name in enumerate(DIGITS):
        torch.testing.assert_close(after[:, index], before[:, shuffled.index(name)])


def test_a_teacher_needs_the_runs_labels_and_a_processor(tmp_path, make_model):
    good = {"label_names": DIGITS, "preprocessing": HALF, "device": "cpu"}
    make_model(id2label=dict(enumerate(DIGITS))).save_pretrained(tmp_path / "teacher")
    HALF.image_processor().save_pretrained(tmp_path / "teacher")
    with pytest.raises(
        ValueError, match=r"predicts the labels \[0, 1, 2, 3, 4, 5, \.\.\.\] \(10\), not the data's \[a, b\]"
    ):
        load_teacher(str(tmp_path / "teacher"), **{**good, "label_names": ["a", "b"]})
    make_model(id2label=dict(enumerate(DIGITS))).save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match=r"has no image processor \(preprocessor_config.json\)"):
        load_teacher(str(tmp_path / "bare"), **good)
    with pytest.raises(ValueError, match="missing does not exist: it is neither a local folder nor a Hub id"):
        load_teacher(str(tmp_path / "missing"), **good)
    with pytest.raises(ValueError, match="'org/teacher' is not in the local Hub cache"):  # offline, as conftest sets
        load_teacher("org/teacher", **good)


def test_a_teacher_of_another_size_and_normalization_sees_the_students_pixels_as_its_processor_would(
    tmp_path, make_model
):
    imagenet = Preprocessing(48, 1.0, "center", "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    make_model(seed=3, image_size=48, id2label=dict(enumerate(DIGITS))).save_pretrained(tmp_path / "teacher")
    imagenet.image_processor().save_pretrained(tmp_path / "teacher")
    teacher, teacher_input, _ = load_teacher(
        str(tmp_path / "teacher"), label_names=DIGITS, preprocessing=HALF, device="cpu"
    )
    student = make_model(seed=2)
    uint8 = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    images = (uint8 / 255 - 0.5) / 0.5  # the student's batch
    # By hand: the same uint8 pixels normalized with the teacher's mean and std, resized by torchvision to 48 px.
    mean, std = torch.tensor(imagenet.mean)[:, None, None], torch.tensor(imagenet.std)[:, None, None]
    expected_input = resize(
        (uint8 / 255 - mean) / std, [48, 48], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    torch.testing.assert_close(teacher_input(images), expected_input, atol=1e-5, rtol=0)
    distiller = Distiller(teacher, mode="soft", alpha=0.5, temperature=1.0, teacher_input=teacher_input)
    logits = student(pixel_values=images).logits
    with torch.no_grad():
        teacher_logits = teacher(pixel_values=expected_input).logits
    expected = 0.5 * 0.3 + 0.5 * soft_distillation_loss(logits, teacher_logits, 1.0)
    torch.testing.assert_close(distiller(torch.tensor(0.3), logits, images), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--distillation", "soft"], "--distillation='soft' needs --teacher_model_name_or_path"),
        (["--teacher_model_name_or_path", "t", "--distillation_temperature", "0"], "temperature=0.0 is not valid"),
        (["--teacher_model_name_or_path", "t", "--distillation_alpha", "1.5"], "alpha=1.5 is not valid; allowed"),
    ],
)
def test_bad_distillation_flags_are_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    error = capsys.readouterr().err
    assert message in error and error.count("error:") == 1


def test_a_missing_or_mismatched_teacher_stops_the_script_before_training(tmp_path, make_model):
    make_model(num_labels=5).save_pretrained(tmp_path / "five")
    image_processor_for(32, crop_pct=1.0, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3).save_pretrained(
        tmp_path / "five"
    )
    for teacher, message in (
        (tmp_path / "missing", "missing does not exist: it is neither a local folder nor a Hub id"),
        (tmp_path / "five", "predicts the"),
    ):
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as stop:
            engine.main(
                ["--teacher_model_name_or_path", str(teacher), "--output_dir", str(out), "--report_to", "none"]
            )
        assert str(stop.value.code).startswith("error: ") and message in str(stop.value.code)
        assert not out.exists()


def save_digits_teacher(make_model, folder):
    teacher = make_model(seed=7, id2label={d: str(d) for d in range(10)})
    teacher.save_pretrained(folder)
    image_processor_for(32, crop_pct=1.0, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3).save_pretrained(
        folder
    )
    return teacher


@pytest.mark.slow
def test_resume_with_a_teacher_after_sigkill_is_exact_and_the_teacher_is_nowhere_saved(tmp_path, make_model):
    from safetensors.torch import load_file
    from script_runs import run_command
    from test_checkpointing import assert_same_run, command, kill_after_checkpoint

    save_digits_teacher(make_model, tmp_path / "teacher")
    before = {p.name: p.read_bytes() for p in (tmp_path / "teacher").iterdir()}
    flags = ("--teacher_model_name_or_path", str(tmp_path / "teacher"), "--distillation_temperature", "2")
    reference = tmp_path / "reference"
    result = run_command(command(reference, "shallow", 1, 2, *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = tmp_path / "resumed"
    kill_after_checkpoint(command(resumed, "shallow", 1, 2, *flags), resumed, 3)
    result = run_command(command(resumed, "shallow", 1, 2, *flags, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    assert_same_run(reference, resumed)
    # The teacher's folder is untouched; no checkpoint or saved model holds more tensors than the student has.
    assert {p.name: p.read_bytes() for p in (tmp_path / "teacher").iterdir()} == before
    student_keys = set(load_file(resumed / "model.safetensors"))
    assert not any("teacher" in key for key in student_keys)
    for weights in resumed.rglob("*.safetensors"):
        assert set(load_file(weights)) <= student_keys, weights
    assert json.loads((resumed / "args.json").read_text())["distillation"] == "soft"


@pytest.mark.slow
def test_a_transformers_vit_cut_with_calibration_distilled_pushed_and_loaded_with_remote_code(
    tmp_path,
    server,  # noqa: F811 (test_hub's loopback Hub)
    python_without_package,
):
    import subprocess
    import sys

    from conversion_sources import transformers_vit
    from script_runs import ROOT
    from test_hub import CLIENT_TIMEOUT_S, LOAD_AND_COMPARE, client_env, expected_logits, run_client
    from transformers import ViTImageProcessor

    source = transformers_vit()  # 32 px, 5 labels: relabelled as the digits'
    source.config.id2label = {d: str(d) for d in range(10)}
    source.config.label2id = {str(d): d for d in range(10)}
    source.classifier = torch.nn.Linear(32, 10)
    source.config.num_labels = 10
    source.save_pretrained(tmp_path / "source")
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3
    ).save_pretrained(tmp_path / "source")
    env = client_env(server.url, tmp_path / "home")

    def python(*argv):
        result = subprocess.run(
            [sys.executable, *argv],
            check=False,
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    reduced, run = tmp_path / "reduced", tmp_path / "run"
    python(
        *("-m", "hf_vit_reduction", "convert", "--from", "transformers", "--input", str(tmp_path / "source")),
        *(
            "--output",
            str(reduced),
            "--strategy",
            "shallow",
            "--prune_method",
            "taylor",
            "--calibration_samples",
            "64",
        ),
    )
    python(
        str(ROOT / "run_image_classification.py"),
        *("--model_name_or_path", str(reduced), "--teacher_model_name_or_path", str(tmp_path / "source")),
        *("--distillation", "hard", "--recipe", "finetune", "--max_train_steps", "2", "--max_eval_samples", "32"),
        *("--workers", "0", "--report_to", "none", "--output_dir", str(run)),
        *("--push_to_hub", "--hub_model_id", "me/vit-recovered"),
    )
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["cut"]["prune_method"] == "taylor" and provenance["cut"]["calibration"]["samples"] == 64
    assert provenance["distillation"]["distillation"] == "hard"
    assert provenance["distillation"]["teacher"] == str(tmp_path / "source")
    results = json.loads((run / "results.json").read_text())
    assert provenance["top1_after"] == results["final_top1"] and 0 <= provenance["top1_before"] <= 100
    assert server.files("me/vit-recovered")["provenance.json"] == (run / "provenance.json").read_bytes()
    expected = expected_logits(run, tmp_path / "logits.pt")
    bare = client_env(server.url, tmp_path / "home-remote", package=False)
    loaded = run_client(
        LOAD_AND_COMPARE, bare, tmp_path, "me/vit-recovered", str(expected), "remote", python=python_without_package
    )
    assert loaded.returncode == 0, loaded.stderr
    loaded = json.loads(loaded.stdout.splitlines()[-1])
    # Another process, so another thread count may sum in another order: the same weights within float rounding.
    assert not loaded["package_importable"] and loaded["max_logit_difference"] <= 1e-5, loaded["max_logit_difference"]


def test_a_distilled_student_learns_the_labels_with_its_class_head_and_the_teacher_with_the_other():
    # DeiT's recipe, as the engine computes its loss: the class head on the labels, the distillation head on the
    # teacher's top class; the two terms weighed by alpha.
    torch.manual_seed(0)
    config = ViTReducedConfig.from_preset("digits", num_labels=10, distillation_token=True)
    student, teacher = ViTReducedForImageClassification(config), ViTReducedForImageClassification(config).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        teacher_top = teacher(pixel_values=images).logits.argmax(-1)
    for alpha in (0.0, 0.5, 1.0):
        student.zero_grad()
        distiller = Distiller(teacher, mode="hard", alpha=alpha, temperature=1.0, distillation_head=True)
        output = student(pixel_values=images)
        logits, distillation_logits = student_heads(output, distiller)
        loss = distiller(torch.nn.functional.cross_entropy(logits, labels), distillation_logits, images)
        expected = (1 - alpha) * torch.nn.functional.cross_entropy(output.cls_logits, labels)
        expected += alpha * torch.nn.functional.cross_entropy(output.distillation_logits, teacher_top)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        loss.backward()
        class_moved = student.classifier.weight.grad.abs().sum().item() > 0
        distillation_moved = student.distillation_classifier.weight.grad.abs().sum().item() > 0
        assert (class_moved, distillation_moved) == (alpha < 1, alpha > 0)
    assert distiller.describe()["distillation_head"] is True


def test_without_a_teacher_or_a_distillation_token_one_head_takes_every_term(make_model):
    distilled, plain = make_model(distillation_token=True), make_model()
    images = torch.randn(2, 3, 32, 32)
    output = distilled(pixel_values=images)
    # No teacher: the labels train the mean of the two heads, what the model predicts.
    assert all(logits is output.logits for logits in student_heads(output, None))
    output = plain(pixel_values=images)
    distiller = Distiller(make_model(seed=1), mode="hard", alpha=0.5, temperature=1.0)
    assert all(logits is output.logits for logits in student_heads(output, distiller))
    assert "distillation_head" not in distiller.describe()
