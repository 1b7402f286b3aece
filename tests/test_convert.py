import json
import math
import os

import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoImageProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
    pipeline,
)

from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification
from hf_vit_reduction.convert import from_timm, from_transformers, main, reduce

PIXELS = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
LABELS = ["cat", "dog", "owl", "fox", "elk"]
TIMM_TINY = {
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 4,
}


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def transformers_vit(model_class=ViTForImageClassification, **kwargs):
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    model = model_class(config, **kwargs).eval()
    # Transformers' init leaves biases and LayerNorms at 0 and 1; random ones make the copy meaningful.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "bias" in name or "layernorm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def timm_vit(**kwargs):
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, **{**TIMM_TINY, **kwargs})
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "bias" in name or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


# --- 🤗 Transformers -----------------------------------------------------------------------------------------------


def test_from_transformers_copies_weights_eps_labels_and_sizes():
    source = transformers_vit()
    model = from_transformers(source)
    assert type(model) is ViTReducedForImageClassification and not model.training
    with torch.no_grad():
        assert max_difference(model(PIXELS).logits, source(PIXELS).logits) <= 1e-4
    config = model.config
    assert config.reduction_strategy == "baseline"
    assert config.layer_norm_eps == 1e-12  # Transformers' default, not ours (1e-6)
    assert model.vit.layers[0].layernorm_before.eps == 1e-12
    assert config.id2label == dict(enumerate(LABELS))
    assert (config.image_size, config.patch_size, config.hidden_size) == (32, 8, 32)
    assert model.num_parameters() == source.num_parameters()
    # The model owns its tensors.
    assert model.classifier.weight.data_ptr() != source.classifier.weight.data_ptr()


@pytest.mark.parametrize(
    "original_format, first_key",
    [
        (True, "vit.encoder.layer.0.attention.attention.query.weight"),
        (False, "vit.layers.0.attention.q_proj.weight"),
    ],
)
def test_from_transformers_folder_with_legacy_or_v5_names(tmp_path, original_format, first_key):
    source = transformers_vit()
    source.save_pretrained(tmp_path, save_original_format=original_format)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert first_key in set(f.keys())
    model = from_transformers(tmp_path)
    with torch.no_grad():
        assert max_difference(model(PIXELS).logits, source(PIXELS).logits) <= 1e-4
    assert model.config.id2label[2] == "owl"


def test_from_transformers_encoder_with_and_without_pooler(tmp_path):
    encoder = transformers_vit(ViTModel, add_pooling_layer=False)
    model = from_transformers(encoder)
    assert model.config.num_labels == 0
    with torch.no_grad():
        expected = encoder(PIXELS).last_hidden_state[:, 0]
        assert max_difference(model(PIXELS).logits, expected) <= 1e-4

    pooled = transformers_vit(ViTModel)
    with pytest.raises(ValueError, match=r"pooler.*drop_pooler=True"):
        from_transformers(pooled)
    pooled.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pooler"):
        from_transformers(tmp_path)
    model = from_transformers(tmp_path, drop_pooler=True)
    with torch.no_grad():
        expected = pooled(PIXELS).last_hidden_state[:, 0]
        assert max_difference(model(PIXELS).logits, expected) <= 1e-4


def test_from_transformers_refuses_what_it_cannot_represent(tmp_path, make_model):
    source = transformers_vit()
    source.config.image_size = (32, 48)
    with pytest.raises(ValueError, match=r"image_size=\(32, 48\) is not square"):
        from_transformers(source)
    with pytest.raises(TypeError, match="allowed: a ViTForImageClassification"):
        from_transformers(timm_vit())
    make_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'vit_reduced' model; allowed: 'vit'"):
        from_transformers(tmp_path)
    with pytest.raises(ValueError, match="not a local model folder"):
        from_transformers(tmp_path / "missing")


# --- timm ----------------------------------------------------------------------------------------------------------


def test_from_timm_model_and_state_dict():
    source = timm_vit(num_classes=5)
    with torch.no_grad():
        expected = source(PIXELS)
        model = from_timm(source)
        assert max_difference(model(PIXELS).logits, expected) <= 1e-4
        state_model = from_timm(source.state_dict(), num_attention_heads=4)
        assert max_difference(state_model(PIXELS).logits, expected) <= 1e-4
    config = model.config
    assert (config.layer_norm_eps, config.hidden_act) == (1e-6, "gelu")
    assert (config.image_size, config.patch_size, config.num_labels) == (32, 8, 5)
    assert model.num_parameters() == sum(p.numel() for p in source.parameters())
    assert all(p.requires_grad for p in model.parameters())  # ready to fine-tune
    with pytest.raises(ValueError, match="num_attention_heads is required"):
        from_timm(source.state_dict())
    with pytest.raises(ValueError, match="hidden_size=48 contradicts the weights"):
        from_timm(source, hidden_size=48)
    with pytest.raises(ValueError, match="reduction_strategy='shallow' cannot be set"):
        from_timm(source, reduction_strategy="shallow")


def test_from_timm_copies_imagenet_labels_activation_and_missing_biases():
    model = from_timm(timm_vit())  # vit_base_patch16_224's 1000 ImageNet classes
    assert model.config.id2label[0] == "tench, Tinca tinca"
    assert len(set(model.config.label2id)) == 1000

    # tanh GELU, no projection biases and a custom LayerNorm eps still give the same function.
    source = timm_vit(
        num_classes=3,
        act_layer="gelu_tanh",
        proj_bias=False,
        norm_layer=lambda dim, **kw: torch.nn.LayerNorm(dim, eps=1e-5, **kw),
    )
    model = from_timm(source)
    assert (model.config.hidden_act, model.config.layer_norm_eps) == (
        "gelu_pytorch_tanh",
        1e-5,
    )
    assert torch.all(model.vit.mlps[0].fc2.bias == 0)
    with torch.no_grad():
        assert max_difference(model(PIXELS).logits, source(PIXELS)) <= 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"global_pool": "avg"}, "global_pool='avg'"),
        ({"class_token": False, "global_pool": "avg"}, "class_token=False"),
        ({"reg_tokens": 4}, "reg_tokens=4"),
        ({"qk_norm": True}, "qk_norm"),
        ({"init_values": 1e-5}, r"layer scale \(init_values\)"),
        ({"pre_norm": True}, r"pre_norm=True"),
        ({"no_embed_class": True}, "no_embed_class=True"),
        ({"dynamic_img_size": True}, "dynamic_img_size=True"),
        ({"fc_norm": True, "global_pool": "avg"}, "fc_norm"),
        ({"img_size": (32, 48)}, "non-square img_size"),
        ({"drop_rate": 0.1}, "head dropout"),
    ],
)
def test_from_timm_refuses_what_it_cannot_represent(kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_timm(timm_vit(**kwargs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"init_values": 1e-5}, r"layer scale \(init_values\) \(keys: blocks.0.ls1"),
        ({"reg_tokens": 4}, "register tokens"),
        ({"global_pool": "avg", "fc_norm": True}, "fc_norm"),
        ({"no_embed_class": True}, "not a class token plus a square grid"),
    ],
)
def test_from_timm_state_dict_refuses_foreign_keys(kwargs, message):
    state = timm_vit(**kwargs).state_dict()
    with pytest.raises(ValueError, match=message):
        from_timm(state, num_attention_heads=4)


# --- Post-hoc reduction --------------------------------------------------------------------------------------------


def test_shallow_first_is_the_papers_slice(make_model):
    baseline = make_model("baseline", seed=3)
    shallow = reduce(baseline, "shallow")
    assert shallow is not baseline and type(shallow) is ViTReducedForImageClassification
    config = shallow.config
    assert (config.reduction_strategy, config.reduction_mlp_ratio) == ("shallow", 0.5)
    assert config.mlp_hidden_size == 128 and len(shallow.vit.mlps) == 4
    for full, pruned in zip(baseline.vit.mlps, shallow.vit.mlps):
        assert torch.equal(pruned.fc1.weight, full.fc1.weight[:128])
        assert torch.equal(pruned.fc1.bias, full.fc1.bias[:128])
        assert torch.equal(pruned.fc2.weight, full.fc2.weight[:, :128])
        assert torch.equal(pruned.fc2.bias, full.fc2.bias)
    # The paper initializes shallow as the first units of the full init: a same-seed shallow model is identical.
    scratch = make_model("shallow", seed=3)
    pruned_per_mlp = 64 * 128 + 128 + 128 * 64  # fc1 rows, fc1 biases, fc2 columns
    assert shallow.num_parameters() == baseline.num_parameters() - 4 * pruned_per_mlp
    assert shallow.num_parameters() == scratch.num_parameters()
    reduced_state, scratch_state = shallow.state_dict(), scratch.state_dict()
    assert reduced_state.keys() == scratch_state.keys()
    assert all(torch.equal(reduced_state[k], scratch_state[k]) for k in scratch_state)
    # The source is left alone and shares no storage with the result.
    shallow.vit.layers[0].attention.qkv.weight.data.zero_()
    assert baseline.vit.layers[0].attention.qkv.weight.abs().sum() > 0
    assert tuple(baseline.vit.mlps[0].fc1.weight.shape) == (256, 64)


def test_shallow_ratio_and_encoder_only(make_model):
    baseline = make_model()
    quarter = reduce(baseline.vit, "shallow", reduction_mlp_ratio=0.25)
    assert type(quarter).__name__ == "ViTReducedModel"
    assert quarter.config.mlp_hidden_size == 64
    assert tuple(quarter.mlps[3].fc2.weight.shape) == (64, 64)


def test_magnitude_pruning_keeps_the_units_with_the_largest_norm_product(make_model):
    baseline = make_model()
    permutation = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    strong, fc1_only, fc2_only = (
        permutation[:64],
        permutation[64:96],
        permutation[96:128],
    )
    with torch.no_grad():
        for mlp in baseline.vit.mlps:
            mlp.fc1.bias.normal_()
            mlp.fc1.weight[strong] *= 10
            mlp.fc2.weight[:, strong] *= 10
            # A large norm on one side only does not make a unit important.
            mlp.fc1.weight[fc1_only] *= 50
            mlp.fc2.weight[:, fc1_only] *= 0.01
            mlp.fc2.weight[:, fc2_only] *= 50
            mlp.fc1.weight[fc2_only] *= 0.01
    pruned = reduce(baseline, "shallow", reduction_mlp_ratio=0.25, prune_method="magnitude")
    kept = strong.sort().values
    for full, small in zip(baseline.vit.mlps, pruned.vit.mlps):
        assert torch.equal(small.fc1.weight, full.fc1.weight[kept])
        assert torch.equal(small.fc1.bias, full.fc1.bias[kept])
        assert torch.equal(small.fc2.weight, full.fc2.weight[:, kept])
        assert torch.equal(small.fc2.bias, full.fc2.bias)
    first = reduce(baseline, "shallow", reduction_mlp_ratio=0.25)
    assert not torch.equal(first.vit.mlps[0].fc1.weight, pruned.vit.mlps[0].fc1.weight)


def test_grouped_leader_shares_the_first_mlp_unscaled(make_model):
    baseline = make_model(seed=3)
    grouped = reduce(baseline, "grouped")
    config = grouped.config
    assert (config.reduction_strategy, config.mlp_share_group_size) == ("grouped", 2)
    assert config.reduction_mlp_ratio == pytest.approx(1 / math.sqrt(2))
    assert len(grouped.vit.mlps) == 2
    scratch = make_model("grouped", seed=3)
    assert grouped.num_parameters() == scratch.num_parameters()
    for group, shared in enumerate(grouped.vit.mlps):
        leader = baseline.vit.mlps[2 * group]
        for name, parameter in shared.named_parameters():
            assert torch.equal(parameter, leader.get_parameter(name))
        # The paper's 1/sqrt(2) is an init scale: a fresh grouped model is scaled, a reduced one is not.
        assert torch.allclose(
            scratch.vit.mlps[group].fc1.weight,
            shared.fc1.weight / math.sqrt(2),
        )


def test_grouped_mean_averages_the_groups_mlps(make_model):
    baseline = make_model()
    with torch.no_grad():
        for mlp in baseline.vit.mlps:
            mlp.fc2.bias.normal_()
    for size in (2, 4):
        grouped = reduce(baseline, "grouped", share_method="mean", mlp_share_group_size=size)
        assert len(grouped.vit.mlps) == 4 // size
        for group, shared in enumerate(grouped.vit.mlps):
            members = baseline.vit.mlps[group * size : (group + 1) * size]
            for name, parameter in shared.named_parameters():
                expected = sum(m.get_parameter(name) for m in members) / size
                assert torch.allclose(parameter, expected, atol=1e-7)


def test_sharing_identical_mlps_changes_no_output(make_model):
    baseline = make_model()
    with torch.no_grad():
        for index in (1, 3):
            baseline.vit.mlps[index].load_state_dict(baseline.vit.mlps[index - 1].state_dict())
        expected = baseline(PIXELS).logits
        for share_method in ("leader", "mean"):
            grouped = reduce(baseline, "grouped", share_method=share_method)
            assert max_difference(grouped(PIXELS).logits, expected) <= 1e-6


def test_reduced_model_saves_and_loads(make_model, tmp_path):
    reduced = reduce(make_model(), "shallow", prune_method="magnitude")
    reduced.save_pretrained(tmp_path)
    loaded = ViTReducedForImageClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(PIXELS).logits, reduced(PIXELS).logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "thin"}, r"no post-hoc meaning.*use strategy='shallow'"),
        (
            {"strategy": "baseline"},
            "strategy='baseline' is not valid; allowed: 'shallow', 'grouped'",
        ),
        (
            {"strategy": "shallow", "prune_method": "largest"},
            "prune_method='largest' is not valid; allowed: 'first', 'magnitude'",
        ),
        (
            {"strategy": "grouped", "share_method": "sum"},
            "share_method='sum' is not valid; allowed: 'leader', 'mean'",
        ),
        (
            {"strategy": "grouped", "prune_method": "magnitude"},
            "prune_method='magnitude' is not valid with strategy='grouped'",
        ),
        (
            {"strategy": "shallow", "share_method": "mean"},
            "share_method='mean' is not valid with strategy='shallow'",
        ),
        (
            {"strategy": "grouped", "reduction_mlp_ratio": 0.5},
            "reduction_mlp_ratio=0.5 is not valid with strategy='grouped'",
        ),
        (
            {"strategy": "shallow", "reduction_mlp_ratio": 1.5},
            r"reduction_mlp_ratio=1.5 is not valid; allowed: a fraction in \(0, 1\]",
        ),
        (
            {"strategy": "grouped", "mlp_share_group_size": 3},
            "mlp_share_group_size=3 is not valid; allowed: a divisor of num_hidden_layers=4",
        ),
    ],
)
def test_reduce_refuses_bad_arguments(make_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        reduce(make_model(), **kwargs)


def test_reduce_refuses_models_it_cannot_reduce(make_model):
    with pytest.raises(ValueError, match="reduction_strategy='shallow'; allowed: 'baseline'"):
        reduce(make_model("shallow"), "grouped")
    with pytest.raises(TypeError, match="convert others with from_transformers"):
        reduce(transformers_vit(), "shallow")


# --- Command -------------------------------------------------------------------------------------------------------


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
    predictions = pipeline("image-classification", model=str(output))(image, top_k=2)
    assert {p["label"] for p in predictions} <= set(LABELS)
    expected = from_transformers(source)
    expected = reduce(expected, "shallow", prune_method="magnitude")
    with torch.no_grad():
        assert torch.equal(model(PIXELS).logits, expected(PIXELS).logits)


def test_command_converts_timm_names_and_state_dict_files(tmp_path):
    main(
        [
            "--from",
            "timm",
            "--input",
            "vit_tiny_patch16_224",
            "--output",
            str(tmp_path / "named"),
        ]
    )
    processor = AutoImageProcessor.from_pretrained(tmp_path / "named")
    assert processor.size == {"height": 224, "width": 224}
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
