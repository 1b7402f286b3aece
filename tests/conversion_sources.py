"""Small source models and helpers shared by the conversion tests."""

import math

import timm
import torch
from transformers import ViTConfig, ViTForImageClassification

PIXELS = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
SIZES = {"image_size": 32, "patch_size": 8}
LABELS = ["cat", "dog", "owl", "fox", "elk"]
TIMM_TINY = {
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 4,
}


def resize_size(preprocessing) -> int:
    """The side timm resizes to before the crop (floor(image_size / crop_pct), as transforms_imagenet_eval)."""
    return math.floor(preprocessing.image_size / preprocessing.crop_pct)


def same_pixels(a, b) -> bool:
    """Two preprocessings giving the same pixels: crop_pct values that resize to the same side are one."""
    fields = ("image_size", "crop_mode", "interpolation")
    return (
        all(getattr(a, f) == getattr(b, f) for f in fields)
        and resize_size(a) == resize_size(b)
        and all(
            len(x) == len(y) and all(math.isclose(u, v, abs_tol=1e-6) for u, v in zip(x, y))
            for x, y in ((a.mean, b.mean), (a.std, b.std))
        )
    )


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def unique_mlps(model):
    return list({id(layer.mlp): layer.mlp for layer in model.vit.layers}.values())


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


# The ViT family behind popular timm checkpoints (issue 30), each tiny: registry name -> the ViTReduced options
# its architecture needs (the rest at their defaults). LayerScale's initial value is not in the weights: a converted
# model records timm's LayerScale default, 1e-5.
TIMM_FAMILY = {
    "vit_base_patch16_224": {},
    "vit_base_patch16_384": {},
    "vit_base_patch32_224": {},
    "deit_base_patch16_224": {},
    "vit_base_patch16_224.mae": {},
    "deit_base_distilled_patch16_224": {"distillation_token": True},
    "deit3_base_patch16_224": {"no_embed_class": True, "layer_scale_init_value": 1e-5},
    "vit_base_patch14_dinov2": {"layer_scale_init_value": 1e-5},
    "vit_base_patch14_reg4_dinov2": {"num_register_tokens": 4, "no_embed_class": True, "layer_scale_init_value": 1e-5},
    "vit_base_patch16_clip_quickgelu_224": {"pre_norm": True, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "vit_base_patch16_gap_224": {"class_token": False, "pooling": "avg"},
    "vit_base_patch16_siglip_224": {"class_token": False, "pooling": "map"},
}


def timm_family(name: str, **kwargs):
    """A tiny timm model of `name`'s architecture; every parameter (tokens, LayerScale, norms included) perturbed at
    random, so that each one's copy shows in the outputs."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **{**TIMM_TINY, "num_classes": 5, **kwargs})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


# ViTReduced's ViT-family options in combinations that cover each one (issue 30), for tests parametrized over them.
MODEL_OPTIONS = {
    "distilled": {"distillation_token": True},
    "registers_layer_scale": {"num_register_tokens": 2, "no_embed_class": True, "layer_scale_init_value": 0.1},
    "pre_norm_quick_gelu": {"pre_norm": True, "hidden_act": "quick_gelu"},
    "avg_fc_norm": {"class_token": False, "pooling": "avg", "fc_norm": True},
    "map": {"pooling": "map", "num_register_tokens": 1},
}
