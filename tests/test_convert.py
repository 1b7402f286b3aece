import json
import os

import pytest
import timm
import torch
from conversion_sources import LABELS, PIXELS, max_difference, transformers_vit
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    AutoImageProcessor,
    ViTImageProcessor,
    pipeline,
)

from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification
from hf_vit_reduction.conversion.calibration import load_calibration
from hf_vit_reduction.conversion.convert import from_transformers, main, reduce
from hf_vit_reduction.image_processing_vit_reduced import Preprocessing, image_processor_for


def test_command_converts_a_transformers_folder(tmp_path, capsys):
    source = transformers_vit()
    source.save_pretrained(tmp_path / "source")  # legacy key names
    ViTImageProcessor(
        size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(tmp_path / "source")
    output = tmp_path / "out"
    main(
        [
            "--from",
            "transformers",
            "--input",
            str(tmp_path / "source"),
            "--output",
            str(output),
            "--strategy",
            "shallow",
            "--prune_method",
            "magnitude",
        ]
    )
    assert "Wrote" in capsys.readouterr().out
    assert {
        "config.json",
        "model.safetensors",
        "configuration_vit_reduced.py",
        "modeling_vit_reduced.py",
        "preprocessor_config.json",
    } <= set(os.listdir(output))
    model = ViTReducedForImageClassification.from_pretrained(output)
    assert model.config.reduction_strategy == "shallow"
    assert model.config.mlp_hidden_size == 32
    assert model.config.id2label[4] == "elk"
    assert json.loads((output / "config.json").read_text())["auto_map"]
    processor = AutoImageProcessor.from_pretrained(output)
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]
    image = Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy())
    predictions = pipeline("image-classification", model=str(output))(image, top_k=len(LABELS))
    assert {p["label"] for p in predictions} <= set(LABELS)
    # The scores are the softmax of the converted model's logits on the saved processor's output.
    with torch.no_grad():
        probabilities = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    scores = {prediction["label"]: prediction["score"] for prediction in predictions}
    assert scores == pytest.approx({LABELS[i]: float(p) for i, p in enumerate(probabilities)}, abs=1e-6)
    expected = from_transformers(source)
    expected = reduce(expected, "shallow", prune_method="magnitude")
    with torch.no_grad():
        assert torch.equal(model(PIXELS).logits, expected(PIXELS).logits)


@pytest.mark.slow  # tens of seconds on 2 cores: the slow tier
def test_command_converts_timm_names_and_state_dict_files(tmp_path):
    main(
        [
            "--from",
            "timm",
            "--input",
            "vit_tiny_patch16_224",
            "--random_weights",
            "--output",
            str(tmp_path / "named"),
        ]
    )
    processor = AutoImageProcessor.from_pretrained(tmp_path / "named")
    # timm's pretrained_cfg of vit_tiny_patch16_224: crop_pct 0.9, bicubic, mean and std 0.5.
    assert processor.size == {"shortest_edge": 248} and processor.crop_size == {"height": 224, "width": 224}
    assert list(processor.image_mean) == [0.5, 0.5, 0.5]
    assert processor.resample == 3  # timm's bicubic
    named = ViTReducedForImageClassification.from_pretrained(tmp_path / "named")
    assert named.config.id2label[0] == "tench, Tinca tinca"
    assert named.config.layer_norm_eps == 1e-6

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7)
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    # A training checkpoint: wrapped and DataParallel-prefixed.
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}},
        tmp_path / "checkpoint.pth",
    )
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source.eval()(pixels)
    for file, strategy in (
        ("weights.safetensors", "baseline"),
        ("checkpoint.pth", "grouped"),
    ):
        output = tmp_path / file.replace(".", "_")
        main(
            [
                "--from",
                "timm",
                "--input",
                str(tmp_path / file),
                "--timm_model",
                "vit_tiny_patch16_224",
                "--output",
                str(output),
                "--strategy",
                strategy,
                "--share_method",
                "mean",
            ]
            if strategy == "grouped"
            else [
                "--from",
                "timm",
                "--input",
                str(tmp_path / file),
                "--timm_model",
                "vit_tiny_patch16_224",
                "--output",
                str(output),
            ]
        )
        model = ViTReducedForImageClassification.from_pretrained(output)
        assert model.config.reduction_strategy == strategy
        assert model.config.num_labels == 7
        if strategy == "baseline":
            with torch.no_grad():
                assert max_difference(model(pixels).logits, expected) <= 1e-4
        else:
            # Each pair of blocks shares the mean of its two source MLPs; everything else is the source's own.
            for index, layer in enumerate(model.vit.layers):
                pair = source.blocks[index - index % 2], source.blocks[index - index % 2 + 1]
                for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
                    mean = (pair[0].mlp.get_parameter(name) + pair[1].mlp.get_parameter(name)) / 2
                    assert torch.allclose(layer.mlp.get_parameter(name), mean, atol=1e-7), (index, name)
                assert torch.equal(layer.attention.qkv.weight, source.blocks[index].attn.qkv.weight)
                assert torch.equal(layer.layernorm_after.weight, source.blocks[index].norm2.weight)
            assert torch.equal(model.vit.embeddings.position_embeddings, source.pos_embed)
            assert torch.equal(model.classifier.weight, source.head.weight)


@pytest.mark.slow  # builds and converts a timm ViT-Tiny (12 blocks, width 192)
def test_command_converts_a_timm_state_dict_at_another_image_size(tmp_path, capsys):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=3).eval()
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    argv = ["--from", "timm", "--input", str(tmp_path / "weights.safetensors"), "--timm_model", "vit_tiny_patch16_224"]
    message = command_error(capsys, [*argv, "--output", str(tmp_path / "default")])
    assert "pass --image_size" in message and not (tmp_path / "default").exists()
    main([*argv, "--image_size", "64", "--output", str(tmp_path / "out")])
    model = ViTReducedForImageClassification.from_pretrained(tmp_path / "out")
    assert model.config.image_size == 64
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert processor.size == {"shortest_edge": 71} and processor.crop_size == {"height": 64, "width": 64}  # 64 / 0.9
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_difference(model(pixels).logits, source(pixels)) <= 1e-4
    assert "--image_size applies to --from timm only" in command_error(
        capsys, ["--from", "transformers", "--input", "x", "--output", str(tmp_path / "t"), "--image_size", "64"]
    )


def command_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_command_writes_nothing_on_error_and_keeps_existing_output(tmp_path, capsys):
    source = transformers_vit()
    source.save_pretrained(tmp_path / "source")
    base = ["--from", "transformers", "--input", str(tmp_path / "source")]

    error = command_error(capsys, [*base, "--output", str(tmp_path / "out"), "--strategy", "thin"])
    assert "use strategy='shallow'" in error
    error = command_error(
        capsys,
        [
            "--from",
            "timm",
            "--input",
            str(tmp_path / "source" / "model.safetensors"),
            "--output",
            str(tmp_path / "out"),
        ],
    )
    assert "pass --timm_model NAME" in error
    error = command_error(
        capsys,
        [
            "--from",
            "timm",
            "--input",
            str(tmp_path / "source" / "model.safetensors"),
            "--timm_model",
            "vit_tiny_patch16_224",
            "--output",
            str(tmp_path / "out"),
        ],
    )
    assert "do not fit the timm model 'vit_tiny_patch16_224'" in error
    # No output and no staging folder is left behind.
    assert sorted(os.listdir(tmp_path)) == ["source"]

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    error = command_error(capsys, [*base, "--output", str(existing)])
    assert "exists and is not empty; pass --overwrite" in error
    assert os.listdir(existing) == ["notes.txt"]

    main([*base, "--output", str(existing), "--overwrite"])
    assert "notes.txt" not in os.listdir(existing)
    # No image processor in the source folder: the model's size with Transformers' ViT normalization.
    processor = AutoImageProcessor.from_pretrained(existing)
    assert processor.size == {"height": 32, "width": 32}
    assert list(processor.image_std) == [0.5, 0.5, 0.5]
    assert sorted(os.listdir(tmp_path)) == ["existing", "source"]
    assert ViTReducedConfig.from_pretrained(existing).layer_norm_eps == 1e-12


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_command_cuts_a_saved_baseline_with_calibration(tmp_path, make_model):
    baseline = make_model(seed=1)
    baseline.save_pretrained(tmp_path / "teacher")
    # As a training run saves it: bicubic, mean = std = 0.5; calibration images go through the same.
    image_processor_for(32, crop_pct=1.0, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3).save_pretrained(
        tmp_path / "teacher"
    )
    base = ["--from", "vit_reduced", "--input", str(tmp_path / "teacher"), "--calibration_samples", "24"]
    main([*base, "--output", str(tmp_path / "out"), "--strategy", "shallow", "--prune_method", "activation"])
    calibration = load_calibration(
        samples=24, seed=0, preprocessing=Preprocessing(32, 1.0, "center", "bicubic", (0.5,) * 3, (0.5,) * 3)
    )
    expected = reduce(baseline, "shallow", prune_method="activation", calibration=calibration)
    model = ViTReducedForImageClassification.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(model(PIXELS).logits, expected(PIXELS).logits)
    assert json.loads((tmp_path / "out" / "provenance.json").read_text()) == {
        "source": f"vit_reduced {tmp_path / 'teacher'}",
        "strategy": "shallow",
        "prune_method": "activation",
        "calibration": {"samples": 24, "seed": 0, "data": "digits (scikit-learn, embedded)"},
        "preprocessing": {
            "image_size": 32,
            "crop_pct": 1.0,
            "crop_mode": "center",
            "interpolation": "bicubic",
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
    }
    assert "24 training images of digits" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--strategy", "shallow", "--prune_method", "taylor", "--calibration_samples", "0"],
            "--calibration_samples 0",
        ),
        (["--strategy", "shallow", "--prune_method", "taylor", "--calibration_samples", "9999"], "more than the 1437"),
        (["--strategy", "grouped", "--prune_method", "activation"], "prune_method='activation' is not valid with"),
    ],
)
def test_command_refuses_bad_calibration(tmp_path, make_model, capsys, flags, message):
    make_model().save_pretrained(tmp_path / "teacher")
    error = command_error(
        capsys,
        ["--from", "vit_reduced", "--input", str(tmp_path / "teacher"), "--output", str(tmp_path / "out"), *flags],
    )
    assert message in error and error.count("error:") == 1
    assert sorted(os.listdir(tmp_path)) == ["teacher"]
