"""`hf-vit-reduction convert` on each family of source a user downloads, saved as the download is (config, weights,
processor): the families ViTReduced holds convert with their logits and their preprocessing; the others are one
line naming what ViTReduced cannot represent."""

import pytest
import timm
import torch
from conversion_sources import (
    LABELS,
    PIXELS,
    SIZES,
    TIMM_FAMILY,
    TIMM_TINY,
    max_difference,
    resize_size,
    same_pixels,
    timm_family,
    timm_vit,
    transformers_vit,
)
from timm.models import save_for_hf
from transformers import (
    AutoImageProcessor,
    BeitConfig,
    BeitForImageClassification,
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTImageProcessor,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    SwinConfig,
    SwinForImageClassification,
)

from hf_vit_reduction import ViTReducedForImageClassification
from hf_vit_reduction.conversion.convert import main
from hf_vit_reduction.image_processing_vit_reduced import Preprocessing, preprocessing_of

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
DINOV2_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "mlp_ratio": 2}
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def _error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


def test_a_deit_download_saved_as_a_vit_keeps_its_resize_crop_and_normalization(tmp_path):
    # facebook/deit-*-patch16-224 (not distilled) are ViTForImageClassification with DeiT's processor.
    source = transformers_vit()
    source.save_pretrained(tmp_path / "deit")
    processor = DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}, **IMAGENET)
    processor.save_pretrained(tmp_path / "deit")
    main(["--from", "transformers", "--input", str(tmp_path / "deit"), "--output_dir", str(tmp_path / "out")])
    saved = preprocessing_of(AutoImageProcessor.from_pretrained(tmp_path / "out"))
    assert saved == preprocessing_of(processor)
    assert saved == Preprocessing(
        32, 32 / 36, "squash", "bicubic", tuple(IMAGENET["image_mean"]), (0.229, 0.224, 0.225)
    )
    model = ViTReducedForImageClassification.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert max_difference(model(PIXELS).logits, source(PIXELS).logits) < 1e-5
    assert model.config.id2label == dict(enumerate(LABELS))


@pytest.mark.parametrize("family", ["vit_base_patch16_224", "deit_tiny_patch16_224"])
def test_a_timm_folder_converts_with_its_pretrained_cfg_and_label_names(tmp_path, family):
    source = timm_vit() if family.startswith("vit") else None
    if source is None:
        torch.manual_seed(0)
        source = timm.create_model(family, pretrained=False, num_classes=len(LABELS), **TIMM_TINY).eval()
    else:
        source.reset_classifier(len(LABELS))
    save_for_hf(source, tmp_path / "download", model_config={"label_names": LABELS}, safe_serialization=True)
    main(["--from", "timm", "--input", str(tmp_path / "download"), "--output_dir", str(tmp_path / "out")])
    cfg = timm.models.get_pretrained_cfg(family)
    expected = Preprocessing(32, cfg.crop_pct, cfg.crop_mode, cfg.interpolation, cfg.mean, cfg.std)
    saved = preprocessing_of(AutoImageProcessor.from_pretrained(tmp_path / "out"))
    assert same_pixels(saved, expected) and resize_size(saved) == 35  # floor(32 / 0.9)
    model = ViTReducedForImageClassification.from_pretrained(tmp_path / "out")
    assert model.config.id2label == dict(enumerate(LABELS))
    with torch.no_grad():
        assert max_difference(model(PIXELS).logits, source(PIXELS)) < 1e-5


@pytest.mark.parametrize("family", TIMM_FAMILY)
@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_every_timm_family_saved_for_the_hub_converts_with_equal_logits(tmp_path, family):
    source = timm_family(family)
    save_for_hf(source, tmp_path / "download", safe_serialization=True)
    main(["--from", "timm", "--input", str(tmp_path / "download"), "--output_dir", str(tmp_path / "out")])
    model = ViTReducedForImageClassification.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert max_difference(model(PIXELS).logits, source(PIXELS)) <= 1e-4


@pytest.mark.parametrize(
    "family, feature",
    [
        ("eva02_base_patch14_224", "rotary position embeddings (RoPE)"),
        ("vit_giant_patch14_dinov2", "SwiGLU MLPs"),
        ("beit_base_patch16_224", "relative position bias"),
    ],
)
def test_a_timm_family_vitreduced_cannot_hold_is_one_line_naming_the_feature(tmp_path, capsys, family, feature):
    save_for_hf(timm_family(family), tmp_path / "download", safe_serialization=True)
    line = _error_line(capsys, ["--from", "timm", "--input", str(tmp_path / "download"), "--output_dir", "out"])
    assert "cannot represent" in line and feature in line
    assert not (tmp_path / "out").exists()


def _transformers_download(folder, model):
    model.save_pretrained(folder)
    DeiTImageProcessor(**IMAGENET).save_pretrained(folder)
    return str(folder)


# Transformers' ViT family, each tiny, with what the converted model's logits equal in its output.
TRANSFORMERS_FAMILY = {
    "DeiTForImageClassification": (
        lambda: DeiTForImageClassification(DeiTConfig(**TINY, **SIZES, id2label=dict(enumerate(LABELS)))),
        lambda output: output.logits,
    ),
    "DeiTForImageClassificationWithTeacher": (
        lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY, **SIZES, id2label=dict(enumerate(LABELS)))),
        lambda output: output.logits,
    ),
    "Dinov2Model": (lambda: Dinov2Model(Dinov2Config(**DINOV2_TINY, **SIZES)), lambda output: output.pooler_output),
    "Dinov2WithRegistersModel": (
        lambda: Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**DINOV2_TINY, **SIZES, num_register_tokens=2)),
        lambda output: output.pooler_output,
    ),
    "CLIPVisionModel": (
        lambda: CLIPVisionModel(CLIPVisionConfig(**TINY, **SIZES)),
        lambda output: output.pooler_output,
    ),
}


@pytest.mark.parametrize("name", TRANSFORMERS_FAMILY)
def test_every_transformers_family_download_converts_with_equal_outputs(tmp_path, name):
    build, reference = TRANSFORMERS_FAMILY[name]
    torch.manual_seed(0)
    source = build().eval()
    with torch.no_grad():
        for parameter in source.parameters():  # LayerScale, tokens, norms and biases away from their init
            parameter.add_(torch.randn_like(parameter) * 0.1)
    source.save_pretrained(tmp_path / name)
    processor = DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}, **IMAGENET)
    processor.save_pretrained(tmp_path / name)
    main(["--from", "transformers", "--input", str(tmp_path / name), "--output_dir", str(tmp_path / "out")])
    model = ViTReducedForImageClassification.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert max_difference(model(PIXELS).logits, reference(source(PIXELS))) <= 1e-4


UNREPRESENTABLE = {
    "BeitForImageClassification": (
        lambda: BeitForImageClassification(BeitConfig(**TINY, **SIZES)),
        "cannot represent relative position bias and layer scale",
    ),
    "SwinForImageClassification": (
        lambda: SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1])),
        "cannot represent windowed attention with relative position bias",
    ),
    "SiglipVisionModel": (
        lambda: SiglipVisionModel(SiglipVisionConfig(**TINY, **SIZES)),
        "cannot represent attention pooling in Transformers' layout",
    ),
}


@pytest.mark.parametrize("name", UNREPRESENTABLE)
def test_a_family_vitreduced_cannot_hold_is_one_line_naming_the_feature(tmp_path, capsys, name):
    build, message = UNREPRESENTABLE[name]
    folder = _transformers_download(tmp_path / name, build())
    line = _error_line(capsys, ["--from", "transformers", "--input", folder, "--output_dir", str(tmp_path / "out")])
    assert message in line and f"({name})" in line
    assert not (tmp_path / "out").exists()


def test_a_dinov2_with_swiglu_mlps_is_one_line_naming_them(tmp_path, capsys):
    folder = _transformers_download(
        tmp_path / "g", Dinov2Model(Dinov2Config(**DINOV2_TINY, **SIZES, use_swiglu_ffn=True))
    )
    line = _error_line(capsys, ["--from", "transformers", "--input", folder, "--output_dir", str(tmp_path / "out")])
    assert "SwiGLU MLPs" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["transformers", "vit_reduced", "timm"])
def test_an_input_folder_that_does_not_exist_is_said_so(tmp_path, capsys, source):
    missing = str(tmp_path / "no-such-model")
    line = _error_line(capsys, ["--from", source, "--input", missing, "--output_dir", str(tmp_path / "out")])
    assert f"{missing} does not exist" in line


@pytest.mark.slow  # the ViT-B/16 path of model_cards/compression.md, at a tiny size, in real processes
def test_a_users_timm_vit_converted_cut_on_photos_recovered_with_distillation_and_served_by_pipeline(tmp_path):
    import json
    import sys

    from image_folders import write_photo_folder
    from PIL import Image
    from script_runs import HANG_S, run_command
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from transformers import pipeline

    classes = ("china", "flower")
    write_photo_folder(tmp_path / "photos" / "train", classes, per_class=19, seed=0)  # 32 of them not held out
    write_photo_folder(tmp_path / "photos" / "val", classes, per_class=4, seed=1)
    overlay = {"crop_pct": 0.875, "crop_mode": "center", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}
    torch.manual_seed(0)
    source = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=2, pretrained_cfg_overlay=overlay, **TIMM_TINY
    )
    save_for_hf(source, tmp_path / "source", model_config={"label_names": list(classes)}, safe_serialization=True)

    def command(*argv):
        result = run_command([sys.executable, "-m", "hf_vit_reduction", *map(str, argv)], timeout=HANG_S)
        assert result.returncode == 0, result.stderr[-3000:]

    train = tmp_path / "photos" / "train"
    command("convert", "--from", "timm", "--input", tmp_path / "source", "--output_dir", tmp_path / "baseline")
    command(
        *("convert", "--from", "vit_reduced", "--input", tmp_path / "baseline", "--output_dir", tmp_path / "cut"),
        *("--strategy", "shallow", "--prune_method", "taylor", "--calibration_samples", "32", "--train_dir", train),
    )
    recovered = tmp_path / "recovered"
    command(
        *("train", "--model_name_or_path", tmp_path / "cut", "--teacher_model_name_or_path", tmp_path / "baseline"),
        *("--recipe", "finetune", "--max_train_steps", "2", "--batch_size", "8", "--workers", "0"),
        *("--train_dir", train, "--validation_dir", tmp_path / "photos" / "val", "--report_to", "none"),
        *("--output_dir", recovered),
    )
    # The source's preprocessing (shorter side to floor(32 / 0.875) = 36, crop 32, ImageNet's) all the way through.
    expected = Preprocessing(32, 0.875, "center", "bicubic", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    for folder in ("baseline", "cut", "recovered"):
        saved = preprocessing_of(AutoImageProcessor.from_pretrained(tmp_path / folder))
        assert same_pixels(saved, expected) and resize_size(saved) == 36, folder
    results = json.loads((recovered / "results.json").read_text())
    assert results["provenance"]["cut"]["calibration"]["samples"] == 32
    assert results["provenance"]["distillation"]["teacher"] == str(tmp_path / "baseline")
    classify = pipeline("image-classification", model=str(recovered))
    photos = [
        (c, path) for c, name in enumerate(classes) for path in sorted((tmp_path / "photos" / "val" / name).iterdir())
    ]
    correct = sum(classify(Image.open(path))[0]["label"] == classes[c] for c, path in photos)
    assert 100 * correct / len(photos) == pytest.approx(results["final_top1"])
