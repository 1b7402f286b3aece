import pytest
import torch
from conversion_sources import PIXELS, TIMM_FAMILY, max_difference, timm_family, timm_vit

from hf_vit_reduction import ViTReducedConfig
from hf_vit_reduction.configuration_vit_reduced import FAMILY_FIELDS
from hf_vit_reduction.conversion import from_timm


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
    assert torch.all(model.vit.layers[0].mlp.fc2.bias == 0)
    with torch.no_grad():
        assert max_difference(model(PIXELS).logits, source(PIXELS)) <= 1e-4


@pytest.mark.parametrize("name", TIMM_FAMILY)
def test_the_vit_family_converts_from_timm_with_equal_outputs(name):
    source = timm_family(name)
    with torch.no_grad():
        expected = source(PIXELS)
        model = from_timm(source)
        assert max_difference(model(PIXELS).logits, expected) <= 1e-4
        config = model.config
        from_state = from_timm(
            source.state_dict(),
            num_attention_heads=4,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
        )
        assert max_difference(from_state(PIXELS).logits, expected) <= 1e-4
    defaults = ViTReducedConfig()
    options = {field: getattr(config, field) for field in (*FAMILY_FIELDS, "layer_norm_eps")}
    assert options == {field: getattr(defaults, field) for field in options} | TIMM_FAMILY[name]
    # CLIP's patch embedding has no bias; the converted one's is zero.
    zero_biases = 0 if source.patch_embed.proj.bias is not None else source.embed_dim
    assert model.num_parameters() == sum(p.numel() for p in source.parameters()) + zero_biases


@pytest.mark.parametrize(
    "kwargs, pooling, fc_norm",
    [
        ({"global_pool": "avg"}, "avg", True),  # timm's default fc_norm for average pooling
        ({"global_pool": "avg", "fc_norm": False}, "avg", False),
        ({"class_token": False, "global_pool": "avg"}, "avg", True),
        ({"global_pool": "token", "fc_norm": True}, "token", True),
        ({"global_pool": "map"}, "map", False),  # with a class token, MAP pools the patches only
        ({"reg_tokens": 2}, "token", False),
        ({"reg_tokens": 2, "global_pool": "avg"}, "avg", True),
        ({"pre_norm": True, "init_values": 0.5}, "token", False),
    ],
)
def test_from_timm_converts_pooling_and_norm_placements(kwargs, pooling, fc_norm):
    source = timm_family("vit_base_patch16_224", **kwargs)
    with torch.no_grad():
        model = from_timm(source)
        assert (model.config.pooling, model.config.fc_norm) == (pooling, fc_norm)
        assert max_difference(model(PIXELS).logits, source(PIXELS)) <= 1e-4


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("vit_base_patch16_224", {"qk_norm": True}, "qk_norm"),
        ("vit_base_patch16_224", {"dynamic_img_size": True}, "dynamic_img_size=True"),
        ("vit_base_patch16_224", {"img_size": (32, 48)}, "non-square img_size"),
        ("vit_base_patch16_224", {"drop_rate": 0.1}, "head dropout"),
        ("vit_base_patch16_224", {"global_pool": "avgmax"}, "global_pool='avgmax'"),
        ("vit_base_patch16_224", {"final_norm": False}, "no final LayerNorm"),
        ("vit_base_patch16_224", {"global_pool": "avg", "reg_tokens": 1, "pool_include_prefix": True}, "prefix"),
        ("vit_giant_patch14_dinov2", {}, "cannot represent: SwiGLU MLPs$"),
        ("eva02_base_patch14_224", {}, r"rotary position embeddings \(RoPE\)"),
        ("beit_base_patch16_224", {}, "relative position bias"),
    ],
)
def test_from_timm_refuses_what_it_cannot_represent(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_timm(timm_family(name, **kwargs))


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("vit_base_patch16_224", {"qk_norm": True}, "qk_norm"),
        ("vit_giant_patch14_dinov2", {}, "SwiGLU MLPs"),
        ("vit_base_patch16_224", {"img_size": (32, 40)}, "not supported"),
    ],
)
def test_from_timm_state_dict_refuses_what_it_cannot_represent(name, kwargs, message):
    state = timm_family(name, **kwargs).state_dict()
    with pytest.raises(ValueError, match=message):
        from_timm(state, num_attention_heads=4)
