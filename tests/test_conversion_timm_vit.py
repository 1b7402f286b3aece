import pytest
import torch
from conversion_sources import PIXELS, max_difference, timm_vit

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
