import math

import pytest

from hf_vit_reduction import PRESETS, ViTReducedConfig


def test_defaults_are_vit_b16_with_timm_layernorm():
    config = ViTReducedConfig()
    assert (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
    ) == (768, 12, 12)
    assert (config.intermediate_size, config.image_size, config.patch_size) == (
        3072,
        224,
        16,
    )
    assert config.layer_norm_eps == 1e-6
    assert config.reduction_strategy == "baseline"
    assert config.reduction_mlp_ratio is None
    assert config.mlp_hidden_size == 3072
    assert config.model_type == "vit_reduced"


@pytest.mark.parametrize(
    "strategy, ratio, width, unique",
    [
        ("grouped", 1 / math.sqrt(2), 3072, 6),
        ("shallow", 0.5, 1536, 12),
        ("thin", 2.0, 1536, 12),
    ],
)
def test_strategy_defaults(strategy, ratio, width, unique):
    config = ViTReducedConfig(reduction_strategy=strategy)
    assert config.reduction_mlp_ratio == pytest.approx(ratio)
    assert config.mlp_hidden_size == width
    assert config.num_unique_mlps == unique


def test_group_size_generalizes():
    config = ViTReducedConfig(reduction_strategy="grouped", mlp_share_group_size=3)
    assert config.num_unique_mlps == 4
    assert [config.mlp_index(i) for i in range(12)] == [
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        2,
        3,
        3,
        3,
    ]


def test_config_round_trips_through_dict():
    config = ViTReducedConfig(reduction_strategy="shallow", reduction_mlp_ratio=0.25, num_labels=7)
    again = ViTReducedConfig.from_dict(config.to_dict())
    assert again.reduction_strategy == "shallow"
    assert again.reduction_mlp_ratio == 0.25
    assert again.mlp_hidden_size == 768
    assert again.num_labels == 7


def test_presets_and_overrides():
    config = ViTReducedConfig.from_preset("small", reduction_strategy="thin")
    assert (config.hidden_size, config.num_attention_heads, config.mlp_hidden_size) == (
        384,
        6,
        768,
    )
    assert set(PRESETS) >= {"tiny", "small", "base"}
    with pytest.raises(ValueError, match=r"preset='huge'.*tiny, small, base"):
        ViTReducedConfig.from_preset("huge")


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"reduction_strategy": "pruned"}, "reduction_strategy", "'pruned'"),
        (
            {"reduction_strategy": "grouped", "reduction_mlp_ratio": 0},
            "reduction_mlp_ratio",
            "0",
        ),
        (
            {"reduction_strategy": "thin", "reduction_mlp_ratio": -1.0},
            "reduction_mlp_ratio",
            "-1.0",
        ),
        (
            {"reduction_strategy": "shallow", "reduction_mlp_ratio": 2.0},
            "reduction_mlp_ratio",
            "2.0",
        ),
        (
            {"reduction_strategy": "shallow", "reduction_mlp_ratio": 1e-4},
            "reduction_mlp_ratio",
            "0.0001",
        ),
        (
            {"reduction_strategy": "thin", "reduction_mlp_ratio": 1e-4},
            "reduction_mlp_ratio",
            "0.0001",
        ),
        (
            {"reduction_strategy": "grouped", "reduction_mlp_ratio": "half"},
            "reduction_mlp_ratio",
            "'half'",
        ),
        (
            {"reduction_strategy": "baseline", "reduction_mlp_ratio": 0.5},
            "reduction_mlp_ratio",
            "0.5",
        ),
        (
            {"reduction_strategy": "grouped", "mlp_share_group_size": 5},
            "mlp_share_group_size",
            "5",
        ),
        ({"mlp_share_group_size": 0}, "mlp_share_group_size", "0"),
        ({"num_attention_heads": 5}, "num_attention_heads", "5"),
        ({"hidden_size": 0}, "hidden_size", "0"),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers", "2.5"),
        ({"image_size": 200}, "patch_size", "16"),
        ({"drop_path_rate": 1.5}, "drop_path_rate", "1.5"),
        ({"hidden_dropout_prob": -0.1}, "hidden_dropout_prob", "-0.1"),
        ({"layer_norm_eps": 0}, "layer_norm_eps", "0"),
        # The ViT family's options.
        ({"num_register_tokens": -1}, "num_register_tokens", "-1"),
        ({"num_register_tokens": 1.5}, "num_register_tokens", "1.5"),
        ({"distillation_token": True, "pooling": "avg"}, "pooling", "'avg'"),
        ({"distillation_token": True, "class_token": False, "pooling": "avg"}, "distillation_token", "True"),
        ({"distillation_token": True, "fc_norm": True}, "fc_norm", "True"),
        ({"class_token": False}, "pooling", "'token'"),
        ({"pooling": "max"}, "pooling", "'max'"),
        ({"class_token": 1}, "class_token", "1"),
        ({"pre_norm": "yes"}, "pre_norm", "'yes'"),
        ({"layer_scale_init_value": "small"}, "layer_scale_init_value", "'small'"),
        ({"layer_scale_init_value": math.inf}, "layer_scale_init_value", "inf"),
        ({"hidden_act": "swiglu"}, "hidden_act", "'swiglu'"),
    ],
)
def test_bad_values_raise_value_error_naming_field_value_and_allowed(kwargs, field, value):
    with pytest.raises(ValueError) as error:
        ViTReducedConfig(**kwargs)
    message = str(error.value)
    assert message.startswith(f"{field}={value} ")
    assert "allowed:" in message


def test_vit_family_options_default_to_todays_vit_and_count_prefix_tokens():
    config = ViTReducedConfig()
    assert (config.class_token, config.distillation_token, config.num_register_tokens) == (True, False, 0)
    assert (config.no_embed_class, config.layer_scale_init_value, config.pre_norm) == (False, None, False)
    assert (config.pooling, config.fc_norm, config.hidden_act) == ("token", False, "gelu")
    assert (config.num_prefix_tokens, config.num_positions) == (1, 197)
    dinov2_registers = ViTReducedConfig(patch_size=14, num_register_tokens=4, no_embed_class=True)
    assert (dinov2_registers.num_prefix_tokens, dinov2_registers.num_positions) == (5, 256)
    deit = ViTReducedConfig(distillation_token=True)
    assert (deit.num_prefix_tokens, deit.num_positions) == (2, 198)
    assert ViTReducedConfig(class_token=False, pooling="map").num_prefix_tokens == 0
