import pytest
import torch
from conversion_sources import LABELS, PIXELS, SIZES, max_difference, timm_vit, transformers_vit
from safetensors import safe_open
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTModel,
)

from hf_vit_reduction import ViTReducedForImageClassification
from hf_vit_reduction.conversion import from_transformers

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, **SIZES}
DINOV2_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "mlp_ratio": 2, **SIZES}


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
    with pytest.raises(TypeError, match="allowed: ViTForImageClassification, ViTModel, DeiTForImageClassification"):
        from_transformers(timm_vit())
    make_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'vit_reduced' model; allowed: 'vit'"):
        from_transformers(tmp_path)
    with pytest.raises(
        ValueError, match="missing is not a folder; allowed: a folder holding a saved Transformers ViT"
    ):
        from_transformers(tmp_path / "missing")


def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():  # LayerScale, tokens, norms and biases away from their init
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


@pytest.mark.parametrize(
    "build, options",
    [
        (
            lambda: DeiTForImageClassification(DeiTConfig(**TINY, num_labels=5)),
            {"num_register_tokens": 1, "layer_norm_eps": 1e-12},  # DeiT's unread distillation token
        ),
        (
            lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY, num_labels=5)),
            {"distillation_token": True, "layer_norm_eps": 1e-12},
        ),
        (
            lambda: Dinov2Model(Dinov2Config(**DINOV2_TINY, layerscale_value=0.5)),
            {"layer_scale_init_value": 0.5, "num_labels": 0},
        ),
        (
            lambda: Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**DINOV2_TINY, num_register_tokens=3)),
            {"num_register_tokens": 3, "no_embed_class": True, "layer_scale_init_value": 1.0, "num_labels": 0},
        ),
        (
            lambda: CLIPVisionModel(CLIPVisionConfig(**TINY)),
            {"pre_norm": True, "fc_norm": True, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "num_labels": 0},
        ),
    ],
)
def test_from_transformers_converts_the_vit_family_and_its_options(build, options):
    torch.manual_seed(0)
    source = _perturbed(build())
    model = from_transformers(source)
    assert {field: getattr(model.config, field) for field in options} == options
    with torch.no_grad():
        output = source(PIXELS)
        ours = model(PIXELS)
        expected = output.logits if hasattr(output, "logits") else output.pooler_output
        assert max_difference(ours.logits, expected) <= 1e-4
        if not hasattr(output, "logits"):  # the encoders' every token too
            assert max_difference(model.vit(PIXELS).last_hidden_state, output.last_hidden_state) <= 1e-4
        if hasattr(output, "cls_logits"):
            assert max_difference(ours.cls_logits, output.cls_logits) <= 1e-4
            assert max_difference(ours.distillation_logits, output.distillation_logits) <= 1e-4
