"""A run from a user's own pretrained model: its preprocessing is the run's, its labels are matched by name, and a
teacher with its own preprocessing enters the loss on the augmented batch."""

import json

import pytest
import torch
from card_checks import check_card
from conversion_sources import same_pixels
from engine_recording import recorded_updates
from image_folders import write_photo_folder
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_utils import PILImageResampling
from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil

from hf_vit_reduction import ViTReducedForImageClassification
from hf_vit_reduction.image_processing_vit_reduced import preprocessing_of
from hf_vit_reduction.training import engine
from hf_vit_reduction.training.arguments import parse_args
from hf_vit_reduction.training.distillation import soft_distillation_loss

CLASSES = ("china", "flower")
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# A DeiT-style processor at the tiny model's size: squash to 36, crop 32, bilinear, ImageNet's normalization.
DEIT_STYLE = {"size": {"height": 36, "width": 36}, "crop_size": {"height": 32, "width": 32}, "resample": 2, **IMAGENET}


@pytest.fixture
def photos(tmp_path):
    write_photo_folder(tmp_path / "train", CLASSES, per_class=4, seed=0)
    write_photo_folder(tmp_path / "val", CLASSES, per_class=3, seed=1)
    return ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")]


def save_start(make_model, folder, labels=CLASSES, seed=0, processor=DEIT_STYLE):
    model = make_model(seed=seed, num_labels=len(labels), id2label=dict(enumerate(labels)))
    model.save_pretrained(folder)
    DeiTImageProcessorPil(**processor).save_pretrained(folder)
    return model


def flags(out, *extra):
    run = ["--recipe", "finetune", "--max_train_steps", "1", "--batch_size", "4", "--workers", "0"]
    return [*run, "--report_to", "none", "--output_dir", str(out), *extra]


def test_the_starting_models_processor_is_the_runs_preprocessing_and_flags_override_it(tmp_path, make_model):
    save_start(make_model, tmp_path / "start")
    config = parse_args(["--model_name_or_path", str(tmp_path / "start"), "--crop_pct", "0.95"])
    assert (config.mean, config.std) == (tuple(IMAGENET["image_mean"]), tuple(IMAGENET["image_std"]))
    assert (config.crop_mode, config.interpolation, config.image_size) == ("squash", "bilinear", 32)
    for field in ("mean", "std", "crop_mode", "interpolation", "image_size"):
        assert config.sources[field] == "starting model", field
    assert config.crop_pct == 0.95 and config.sources["crop_pct"] == "command line"
    scratch = parse_args([])
    assert scratch.mean == (0.5,) * 3 and scratch.sources["mean"] == "digits recipe"
    assert scratch.crop_mode == "center"


def test_a_processor_for_another_size_than_the_models_is_one_line(tmp_path, make_model):
    save_start(make_model, tmp_path / "start", processor={**DEIT_STYLE, "crop_size": {"height": 24, "width": 24}})
    config = parse_args(["--model_name_or_path", str(tmp_path / "start")])
    with pytest.raises(ValueError, match="image processor crops 24 px images, but the model takes 32 px"):
        engine.load_model(config, list(CLASSES))


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_a_run_from_a_model_with_imagenet_normalization_evaluates_trains_and_saves_with_it(
    tmp_path, make_model, photos
):
    start = save_start(make_model, tmp_path / "start")
    out = tmp_path / "out"
    config = parse_args(flags(out, "--model_name_or_path", str(tmp_path / "start"), *photos))
    with engine.running(config) as run:
        # The evaluation transform then the device normalization give the processor's own pixels.
        processor = DeiTImageProcessorPil(**DEIT_STYLE)
        for path in sorted((tmp_path / "val" / "china").iterdir()):
            photo = Image.open(path).convert("RGB")
            ours = run.normalize(run.eval_transform(photo)[None])[0]
            torch.testing.assert_close(ours, processor(photo, return_tensors="pt").pixel_values[0], atol=1e-5, rtol=0)
        # Top-1 before recovery: the model's own, through its own processor, counted by hand.
        correct = total = 0
        for label, name in enumerate(CLASSES):
            for path in sorted((tmp_path / "val" / name).iterdir()):
                pixels = processor(Image.open(path).convert("RGB"), return_tensors="pt").pixel_values
                with torch.no_grad():
                    correct += int(start(pixels).logits.argmax(-1).item() == label)
                total += 1
        assert run.top1_before == pytest.approx(100 * correct / total)
        engine.train(run)
        engine.finish(run)
    saved = preprocessing_of(AutoImageProcessor.from_pretrained(out))
    assert same_pixels(saved, preprocessing_of(processor))
    recipe = json.loads((out / "args.json").read_text())["recipe"]
    assert recipe["mean"] == {"value": IMAGENET["image_mean"], "source": "starting model"}
    assert recipe["crop_mode"] == {"value": "squash", "source": "starting model"}
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["labels"] == {"labels": "same"}
    assert provenance["preprocessing"]["std"] == "starting model"
    card = check_card(out / "README.md", out)
    assert "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)" in card
    assert f"mean, std from the starting model `{tmp_path / 'start'}`'s processor" in card


def test_a_student_with_the_labels_in_another_order_keeps_its_predictions(tmp_path, make_model, photos):
    saved = save_start(make_model, tmp_path / "start", labels=("flower", "china"))
    config = parse_args(flags(tmp_path / "out", "--model_name_or_path", str(tmp_path / "start"), *photos))
    model, labels = engine.load_model(config, list(CLASSES))
    assert labels.describe() == {"labels": "permuted", "model_labels": ["flower", "china"]}
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before, after = saved(pixels).logits, model.eval()(pixels).logits
    torch.testing.assert_close(after, before[:, [1, 0]])  # china's score is what the saved model gave china
    assert model.config.id2label == dict(enumerate(CLASSES))


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_other_labels_need_ignore_mismatched_sizes_which_makes_a_recorded_new_head(tmp_path, make_model, photos):
    save_start(make_model, tmp_path / "start", labels=("cat", "dog", "owl"))
    out = tmp_path / "out"
    argv = flags(out, "--model_name_or_path", str(tmp_path / "start"), *photos)
    with pytest.raises(SystemExit) as stop:
        engine.main(argv)
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message and not out.exists()
    assert "predicts the labels [cat, dog, owl] (3), not the data's [china, flower] (2)" in message
    assert "--ignore_mismatched_sizes" in message
    engine.main([*argv, "--ignore_mismatched_sizes"])
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["labels"] == {"labels": "new head", "model_labels": ["cat", "dog", "owl"]}
    assert ViTReducedForImageClassification.from_pretrained(out).config.id2label == dict(enumerate(CLASSES))
    card = (out / "README.md").read_text()
    assert (
        "- A new classifier for the data's labels (`--ignore_mismatched_sizes`): the starting model predicted " in card
    )
    assert "predicted cat, dog, owl." in card


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_a_model_saved_without_label_names_is_matched_by_index_and_says_so(tmp_path, make_model, photos, caplog):
    start = make_model(num_labels=2)  # no id2label given: Transformers names the classes LABEL_0, LABEL_1
    start.save_pretrained(tmp_path / "start")
    DeiTImageProcessorPil(**DEIT_STYLE).save_pretrained(tmp_path / "start")
    assert start.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    config = parse_args(flags(tmp_path / "unused", "--model_name_or_path", str(tmp_path / "start"), *photos))
    model, _ = engine.load_model(config, list(CLASSES))
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # class i is the data's label i: the head is kept as it was
        torch.testing.assert_close(model.eval()(pixels).logits, start(pixels).logits)
    assert model.config.id2label == dict(enumerate(CLASSES))
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        engine.main(flags(out, "--model_name_or_path", str(tmp_path / "start"), *photos))
    assert "no label names ([LABEL_0, LABEL_1] (2), Transformers' placeholders): its classes are the data's" in (
        caplog.text
    )
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["labels"] == {"labels": "by index", "model_labels": ["LABEL_0", "LABEL_1"]}
    card = (out / "README.md").read_text()
    assert "- The starting model named no labels (LABEL_0, LABEL_1): its classes were taken as the data's" in card
    # Placeholders for another number of classes than the data's are not a match.
    three = make_model(num_labels=3)
    three.save_pretrained(tmp_path / "three")
    DeiTImageProcessorPil(**DEIT_STYLE).save_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match=r"predicts the labels \[LABEL_0, LABEL_1, LABEL_2\] \(3\), not the data's"):
        engine.load_model(parse_args(flags(out, "--model_name_or_path", str(tmp_path / "three"))), list(CLASSES))


def test_validation_classes_that_training_lacks_are_one_line_naming_them(tmp_path):
    write_photo_folder(tmp_path / "train", CLASSES, per_class=2)
    write_photo_folder(tmp_path / "val", (*CLASSES, "zebra"), per_class=1)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        engine.main(flags(out, "--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")))
    message = str(stop.value.code)
    assert message.startswith("error: validation_dir=") and "has classes that train_dir=" in message
    assert message.endswith("has not: zebra; allowed: the training classes") and not out.exists()


def test_a_teachers_term_enters_the_loss_on_the_augmented_batch_in_its_own_preprocessing(tmp_path, make_model, photos):
    save_start(
        make_model, tmp_path / "start", processor={**DEIT_STYLE, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    )
    # The teacher: 48 px, bicubic, ImageNet's normalization; the student: 32 px, mean = std = 0.5.
    teacher_processor = {"size": {"height": 48, "width": 48}, "crop_size": {"height": 48, "width": 48}, **IMAGENET}
    teacher = make_model(seed=5, image_size=48, num_labels=2, id2label={0: "flower", 1: "china"})
    teacher.save_pretrained(tmp_path / "teacher")
    DeiTImageProcessorPil(**teacher_processor, resample=PILImageResampling.BICUBIC).save_pretrained(
        tmp_path / "teacher"
    )
    argv = ["--model_name_or_path", str(tmp_path / "start"), "--teacher_model_name_or_path", str(tmp_path / "teacher")]
    config = parse_args(flags(tmp_path / "out", *argv, "--distillation_alpha", "0.3", "--mixup", "0.5", *photos))
    with engine.running(config) as run:
        criterion = run.criterion
        with recorded_updates(run) as seen:
            engine.train_one_epoch(run, 0)
    batch, loss = seen["batches"][0], seen["losses"][0]
    # Mixup made soft targets: the batch the student saw is the augmented one.
    assert batch["targets"].dim() == 2 and not torch.equal(batch["targets"].max(-1).values, torch.ones(4))
    # By hand: the student's pixels back to [0, 1], normalized as the teacher's processor does, resized to 48 px.
    unit = batch["pixel_values"] * 0.5 + 0.5
    mean, std = torch.tensor(IMAGENET["image_mean"])[:, None, None], torch.tensor(IMAGENET["image_std"])[:, None, None]
    teacher_pixels = torch.nn.functional.interpolate(
        (unit - mean) / std, size=(48, 48), mode="bicubic", antialias=True, align_corners=False
    )
    with torch.no_grad():
        teacher_logits = teacher.eval()(teacher_pixels).logits[:, [1, 0]]  # its labels in the data's order
        expected = 0.7 * criterion(batch["logits"], batch["targets"]) + 0.3 * soft_distillation_loss(
            batch["logits"], teacher_logits, 1.0
        )
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(loss, criterion(batch["logits"], batch["targets"]).detach(), atol=1e-3)


def test_a_distilled_student_learns_the_targets_with_its_class_head_and_the_teacher_with_the_other(
    tmp_path, make_model, photos
):
    student = make_model(num_labels=2, id2label=dict(enumerate(CLASSES)), distillation_token=True)
    student.save_pretrained(tmp_path / "start")
    DeiTImageProcessorPil(**DEIT_STYLE).save_pretrained(tmp_path / "start")
    save_start(make_model, tmp_path / "teacher", seed=5)
    argv = ["--model_name_or_path", str(tmp_path / "start"), "--teacher_model_name_or_path", str(tmp_path / "teacher")]
    config = parse_args(
        flags(tmp_path / "out", *argv, "--distillation", "hard", "--distillation_alpha", "0.3", *photos)
    )
    with engine.running(config) as run:
        criterion = run.criterion
        with recorded_updates(run) as seen:
            engine.train_one_epoch(run, 0)
    batch, loss = seen["batches"][0], seen["losses"][0]
    output = batch["output"]
    # The targets train the class head alone; the teacher's top class trains the distillation head.
    assert batch["logits"] is output.cls_logits and not torch.equal(output.cls_logits, output.logits)
    with torch.no_grad():
        teacher_top = run.distiller.teacher(pixel_values=batch["pixel_values"]).logits.argmax(-1)
        expected = 0.7 * criterion(output.cls_logits, batch["targets"]) + 0.3 * torch.nn.functional.cross_entropy(
            output.distillation_logits, teacher_top
        )
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    assert run.distiller.describe()["distillation_head"] is True
