"""The saved image processor against timm's evaluation transform, on real non-square photos."""

import json
import subprocess
import sys

import pytest
import torch
from card_checks import check_card
from image_folders import sample_photos, write_photo_folder
from PIL import Image
from script_runs import HANG_S, environment, run_script
from timm.data import resolve_data_config
from timm.data.transforms_factory import create_transform
from timm.models import get_pretrained_cfg
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    BitImageProcessor,
    DeiTImageProcessor,
    ViTImageProcessor,
    pipeline,
)
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from hf_vit_reduction import ViTReducedImageProcessor, ViTReducedImageProcessorPil
from hf_vit_reduction.conversion.convert import main as convert
from hf_vit_reduction.image_processing_vit_reduced import image_processor_for, preprocessing_of
from hf_vit_reduction.training.recipes import RECIPES

HALF = (0.5, 0.5, 0.5)  # the training script's normalization (timm's ViT)


def _timm_settings(name: str) -> dict:
    cfg = get_pretrained_cfg(name)
    return {
        "image_size": cfg.input_size[-1],
        "crop_pct": cfg.crop_pct,
        "interpolation": cfg.interpolation,
        "mean": cfg.mean,
        "std": cfg.std,
        "crop_mode": cfg.crop_mode,
    }


SETTINGS = {
    "paper recipe": {
        "image_size": 224,
        **{key: RECIPES["paper"][key] for key in ("crop_pct", "interpolation")},
        "mean": HALF,
        "std": HALF,
    },
    "digits recipe": {
        "image_size": 32,
        **{key: RECIPES["digits"][key] for key in ("crop_pct", "interpolation")},
        "mean": HALF,
        "std": HALF,
    },
    # A converted timm model's own settings: ImageNet's mean and std; and timm's other crop mode, bilinear.
    "deit_tiny_patch16_224": _timm_settings("deit_tiny_patch16_224"),
    "vit_small_patch16_lingbot.robbyant": {**_timm_settings("vit_small_patch16_lingbot.robbyant"), "image_size": 96},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_processor_pixels_equal_timm_evaluation_on_non_square_photos(name):
    settings = SETTINGS[name]
    evaluation = create_transform(
        input_size=settings["image_size"],
        is_training=False,
        crop_pct=settings["crop_pct"],
        interpolation=settings["interpolation"],
        mean=settings["mean"],
        std=settings["std"],
        crop_mode=settings.get("crop_mode"),
    )
    saved = image_processor_for(
        settings["image_size"],
        crop_pct=settings["crop_pct"],
        interpolation=settings["interpolation"],
        mean=settings["mean"],
        std=settings["std"],
        crop_mode=settings.get("crop_mode") or "center",
    )
    photos = sample_photos(6)
    # The two photos (640 x 427) at crop_pct 0.9 are where a floored crop offset lands one pixel off.
    assert any(photo.width != photo.height for photo in photos)
    for processor in (
        ViTReducedImageProcessorPil.from_dict(saved.to_dict()),
        ViTReducedImageProcessor.from_dict(saved.to_dict()),
    ):
        for photo in photos:
            expected = evaluation(photo)
            pixels = processor(photo, return_tensors="pt").pixel_values[0]
            assert pixels.shape == expected.shape
            # In grey levels: PIL resizes as timm does; torchvision resizes a uint8 tensor, rounding differently.
            differences = ((pixels - expected).abs() * 255 * torch.tensor(settings["std"])[:, None, None]).round()
            if processor.backend == "pil":
                assert differences.max() == 0, photo.size
            else:
                assert differences.max() <= 2 and (differences > 0).float().mean() < 0.01, photo.size


def test_saved_processor_loads_with_either_backend_and_carries_its_code(tmp_path):
    image_processor_for(224, crop_pct=0.9, interpolation="bicubic", mean=HALF, std=HALF).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 248}  # floor(224 / 0.9), timm's scale size
    assert saved["crop_size"] == {"height": 224, "width": 224}
    assert saved["resample"] == Image.Resampling.BICUBIC
    assert saved["auto_map"]["AutoImageProcessor"] == {
        "torchvision": "image_processing_vit_reduced.ViTReducedImageProcessor",
        "pil": "image_processing_vit_reduced.ViTReducedImageProcessorPil",
    }
    assert (tmp_path / "image_processing_vit_reduced.py").is_file()
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is ViTReducedImageProcessorPil
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is ViTReducedImageProcessor


def _timm_evaluation_of(folder, config):
    recipe = {key: entry["value"] for key, entry in json.loads((folder / "args.json").read_text())["recipe"].items()}
    return create_transform(
        input_size=config.image_size,
        is_training=False,
        crop_pct=recipe["crop_pct"],
        interpolation=recipe["interpolation"],
        mean=HALF,
        std=HALF,
    )


def _check_pipeline_top1_equals_evaluation(model_folder, images, evaluation):
    model = AutoModelForImageClassification.from_pretrained(model_folder).eval()
    photos = [Image.open(path).convert("RGB") for path in images]
    pixels = torch.stack([evaluation(photo) for photo in photos])
    with torch.no_grad():
        expected = [model.config.id2label[index] for index in model(pixels).logits.argmax(-1).tolist()]
    for backend in ("torchvision", "pil"):
        processor = AutoImageProcessor.from_pretrained(model_folder, backend=backend)
        if backend == "pil":  # the same pixels: a barely trained model may give every image one label
            assert torch.allclose(processor(photos, return_tensors="pt").pixel_values, pixels, atol=1e-6)
        classifier = pipeline("image-classification", model=str(model_folder), image_processor=processor)
        predicted = [result[0]["label"] for result in classifier([str(path) for path in images], top_k=1)]
        assert predicted == expected, backend


@pytest.mark.slow  # a short training run in a subprocess
@pytest.mark.parametrize("recipe, size", [("paper", ["--model_size", "digits", "--image_size", "64"]), ("digits", [])])
def test_pipeline_predicts_what_evaluation_did_for_a_trained_model(tmp_path, recipe, size):
    train = write_photo_folder(tmp_path / "train", per_class=2, seed=1)
    validation = write_photo_folder(tmp_path / "validation", per_class=4, seed=2)
    out = tmp_path / "run"
    result = run_script(
        [
            *("--recipe", recipe, *size, "--train_dir", str(train), "--validation_dir", str(validation)),
            *("--output_dir", str(out), "--max_train_steps", "2", "--batch_size", "2", "--workers", "0"),
            *("--report_to", "none"),
        ],
        timeout=HANG_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images = sorted(validation.glob("*/*.png"))
    for folder in (out, out / "best_model"):
        model = AutoModelForImageClassification.from_pretrained(folder)
        _check_pipeline_top1_equals_evaluation(folder, images, _timm_evaluation_of(out, model.config))
        check_card(folder / "README.md", folder)  # its preprocessing section states this processor's numbers


@pytest.mark.slow  # a ViT-Ti conversion and its pipeline at 224 px
def test_pipeline_predicts_what_timm_evaluation_did_for_a_converted_model(tmp_path):
    convert(
        [
            "--from",
            "timm",
            "--input",
            "deit_tiny_patch16_224",
            "--random_weights",
            "--output",
            str(tmp_path / "converted"),
        ]
    )
    import timm

    evaluation = create_transform(**resolve_data_config({}, model=timm.create_model("deit_tiny_patch16_224")))
    images = sorted(write_photo_folder(tmp_path / "validation", per_class=3).glob("*/*.png"))
    _check_pipeline_top1_equals_evaluation(tmp_path / "converted", images, evaluation)
    # A Hub user without this package: the processor comes as remote code, the backend's own class.
    load = (
        "import sys; from transformers import AutoImageProcessor; "
        "print(type(AutoImageProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)).__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", load, str(tmp_path / "converted")],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=HANG_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("image_processing_vit_reduced")


IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# Saved processors as downloads carry them: google/vit-* (squash 224), facebook/deit-* (squash 256, crop 224),
# BiT (shorter side 256, crop 224), and a bilinear one at another size.
SAVED_PROCESSORS = {
    "ViTImageProcessor": (ViTImageProcessor, ViTImageProcessorPil, {"size": {"height": 224, "width": 224}}),
    "DeiTImageProcessor": (
        DeiTImageProcessor,
        DeiTImageProcessorPil,
        {"size": {"height": 256, "width": 256}, "crop_size": {"height": 224, "width": 224}, **IMAGENET},
    ),
    "BitImageProcessor": (
        BitImageProcessor,
        BitImageProcessorPil,
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, **IMAGENET},
    ),
    "bilinear 96 of 120": (
        DeiTImageProcessor,
        DeiTImageProcessorPil,
        {"size": {"height": 120, "width": 120}, "crop_size": {"height": 96, "width": 96}, "resample": 2},
    ),
}


@pytest.mark.parametrize("name", SAVED_PROCESSORS)
def test_preprocessing_read_from_a_saved_processor_gives_its_pixels(name):
    torchvision_class, pil_class, fields = SAVED_PROCESSORS[name]
    preprocessing = preprocessing_of(torchvision_class(**fields))
    assert preprocessing == preprocessing_of(pil_class(**fields))
    evaluation = create_transform(
        input_size=preprocessing.image_size,
        is_training=False,
        crop_pct=preprocessing.crop_pct,
        crop_mode=preprocessing.crop_mode,
        interpolation=preprocessing.interpolation,
        mean=preprocessing.mean,
        std=preprocessing.std,
    )
    grey = 255 * torch.tensor(preprocessing.std)[:, None, None]
    photos = sample_photos(6)
    for processor in (torchvision_class(**fields), pil_class(**fields)):
        for photo in photos:
            expected, pixels = evaluation(photo), processor(photo, return_tensors="pt").pixel_values[0]
            if name == "BitImageProcessor" and photo.width > photo.height:
                # BiT floors the crop offset where torchvision (timm, our processor) rounds it to even: by hand,
                # on a landscape photo, its crop starts round(m / 2) - m // 2 columns left (m: the width's margin).
                margin = int(256 * photo.width / photo.height) - 224
                shift = round(margin / 2) - margin // 2
                pixels, expected = pixels[..., shift:], expected[..., : expected.shape[-1] - shift]
            differences = ((pixels - expected).abs() * grey).round()
            if processor.backend == "pil" and not (name == "BitImageProcessor" and photo.size == (225, 55)):
                assert differences.max() == 0, (photo.size, processor.backend)
            else:  # torchvision resizes a tensor, rounding differently; BiT sizes a 225 x 55 photo one pixel off
                assert differences.max() <= 3 and (differences > 0).float().mean() < 0.25, photo.size


def test_preprocessing_of_names_the_field_it_cannot_express():
    with pytest.raises(ValueError, match=r"size=\{'height': 224, 'width': 200\}; allowed: a square size"):
        preprocessing_of(ViTImageProcessor(size={"height": 224, "width": 200}))
    with pytest.raises(ValueError, match="do_resize=False"):
        preprocessing_of(ViTImageProcessor(do_resize=False))
    with pytest.raises(ValueError, match="rescale_factor=1.0; allowed: pixel values divided by 255"):
        preprocessing_of(ViTImageProcessor(rescale_factor=1.0))
    with pytest.raises(ValueError, match="without a centre crop"):
        preprocessing_of(BitImageProcessor(do_center_crop=False))
    unnormalized = preprocessing_of(ViTImageProcessor(do_normalize=False))
    assert unnormalized.mean == (0.0,) * 3 and unnormalized.std == (1.0,) * 3
