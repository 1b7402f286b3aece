import pytest
import torch
from conversion_sources import LABELS, PIXELS, max_difference, timm_vit, transformers_vit
from safetensors import safe_open
from transformers import (
    ViTModel,
)

from hf_vit_reduction import ViTReducedForImageClassification
from hf_vit_reduction.conversion import from_transformers


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
    with pytest.raises(ValueError, match="missing does not exist"):
        from_transformers(tmp_path / "missing")
