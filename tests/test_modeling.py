import inspect
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import warnings
from itertools import pairwise

import pytest
import torch
from conversion_sources import MODEL_OPTIONS, max_difference
from PIL import Image
from safetensors import safe_open
from timm.layers import resample_abs_pos_embed
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    pipeline,
)
from transformers import logging as transformers_logging

from hf_vit_reduction import (
    REDUCTION_STRATEGIES,
    ViTReducedConfig,
    ViTReducedForImageClassification,
    ViTReducedModel,
)

PIXELS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def unique_mlps(model):
    return list({id(layer.mlp): layer.mlp for layer in model.vit.layers}.values())


def mlp_calls_per_forward(model):
    """How many blocks run each unique MLP in one forward pass."""
    mlps = unique_mlps(model)
    calls = [0] * len(mlps)
    hooks = [
        mlp.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)) for i, mlp in enumerate(mlps)
    ]
    with torch.no_grad():
        model(PIXELS)
    for hook in hooks:
        hook.remove()
    return calls


@pytest.mark.parametrize(
    "strategy, unique, width, calls",
    [
        ("baseline", 4, 256, [1] * 4),
        ("grouped", 2, 256, [2, 2]),
        ("shallow", 4, 128, [1] * 4),
        ("thin", 4, 128, [1] * 4),
    ],
)
def test_structure_per_strategy(make_model, strategy, unique, width, calls):
    model = make_model(strategy)
    assert len(model.vit.layers) == 4
    assert len(unique_mlps(model)) == unique
    for mlp in unique_mlps(model):
        assert tuple(mlp.fc1.weight.shape) == (width, 64)
        assert tuple(mlp.fc2.weight.shape) == (64, width)
    assert mlp_calls_per_forward(model) == calls
    # Norms and attention stay per block under every strategy.
    assert len({id(layer.attention.qkv.weight) for layer in model.vit.layers}) == 4


def test_grouped_generalizes_to_larger_groups(make_model):
    model = make_model("grouped", mlp_share_group_size=4)
    assert mlp_calls_per_forward(model) == [4]


def test_param_counts_at_tiny_scale(make_model):
    counts = {s: make_model(s).num_parameters() for s in REDUCTION_STRATEGIES}
    mlp = 64 * 256 + 256 + 256 * 64 + 64
    half_mlp = 64 * 128 + 128 + 128 * 64 + 64
    assert counts["baseline"] - counts["grouped"] == 2 * mlp
    assert counts["baseline"] - counts["shallow"] == 4 * (mlp - half_mlp)
    assert counts["shallow"] == counts["thin"]


def test_init_follows_timm(make_model):
    torch.manual_seed(0)
    model = ViTReducedForImageClassification(ViTReducedConfig.from_preset("tiny", num_hidden_layers=2, num_labels=10))
    embeddings = model.vit.embeddings
    assert embeddings.position_embeddings.std().item() == pytest.approx(0.02, rel=0.02)
    assert embeddings.cls_token.std().item() == pytest.approx(1e-6, rel=0.2)
    assert model.vit.layers[0].attention.qkv.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert model.vit.layers[1].mlp.fc2.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert model.classifier.weight.std().item() == pytest.approx(0.02, rel=0.1)
    for layer in model.vit.layers:
        assert torch.all(layer.layernorm_before.weight == 1) and torch.all(layer.layernorm_after.bias == 0)
        assert layer.layernorm_before.eps == 1e-6
        assert torch.all(layer.attention.qkv.bias == 0)
    assert all(torch.all(mlp.fc1.bias == 0) and torch.all(mlp.fc2.bias == 0) for mlp in unique_mlps(model))
    # No truncation within 2 absolute: timm's trunc_normal_(std=.02) never truncates in practice.
    assert model.vit.layers[0].mlp.fc1.weight.abs().max().item() > 0.08


def test_grouped_leader_init_is_scaled_by_inverse_sqrt2():
    torch.manual_seed(0)
    config = ViTReducedConfig.from_preset("tiny", num_hidden_layers=2, reduction_strategy="grouped")
    mlp = ViTReducedForImageClassification(config).vit.layers[0].mlp
    assert mlp.fc1.weight.std().item() == pytest.approx(0.02 / math.sqrt(2), rel=0.01)
    assert mlp.fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(2), rel=0.01)


def test_construction_is_deterministic_and_reductions_match_a_same_seed_baseline(
    make_model,
):
    baseline, again = make_model("baseline", seed=3), make_model("baseline", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(baseline.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(make_model("baseline", seed=4).classifier.weight, baseline.classifier.weight)

    shallow, grouped = make_model("shallow", seed=3), make_model("grouped", seed=3)
    for full, pruned in zip(unique_mlps(baseline), unique_mlps(shallow)):
        assert torch.equal(pruned.fc1.weight, full.fc1.weight[:128])
        assert torch.equal(pruned.fc2.weight, full.fc2.weight[:, :128])
    ratio = 1 / math.sqrt(2)
    for group, shared in enumerate(unique_mlps(grouped)):
        leader = baseline.vit.layers[2 * group].mlp
        assert torch.allclose(shared.fc1.weight, leader.fc1.weight * ratio)
        assert torch.allclose(shared.fc2.weight, leader.fc2.weight * ratio)
    # Everything outside the MLPs is identical across strategies.
    assert torch.equal(
        shallow.vit.layers[2].attention.qkv.weight,
        baseline.vit.layers[2].attention.qkv.weight,
    )
    assert torch.equal(grouped.classifier.weight, baseline.classifier.weight)


def test_drop_path_rises_linearly(make_model):
    model = make_model(drop_path_rate=0.3)
    assert [layer.drop_path.drop_prob for layer in model.vit.layers] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model.train()
    torch.manual_seed(0)
    first = model(PIXELS).logits
    second = model(PIXELS).logits
    assert not torch.allclose(first, second)
    model.eval()
    assert torch.equal(model(PIXELS).logits, model(PIXELS).logits)


def test_labels_and_problem_types(make_model):
    model = make_model()
    labels = torch.tensor([1, 2, 3])
    output = model(PIXELS, labels=labels)
    assert output.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(output.logits, labels).item())

    multi = make_model(problem_type="multi_label_classification")
    targets = torch.zeros(3, 10).index_fill_(1, torch.tensor([0]), 1.0)
    output = multi(PIXELS, labels=targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, targets)
    assert output.loss.item() == pytest.approx(expected.item())

    regression = make_model(num_labels=1)
    values = torch.tensor([0.5, 1.0, -1.0])
    output = regression(PIXELS, labels=values)
    assert output.loss.item() == pytest.approx(torch.nn.functional.mse_loss(output.logits.squeeze(), values).item())


def test_hidden_states_attentions_and_return_dict(make_model):
    model = make_model(attn_implementation="eager")
    output = model(PIXELS, output_hidden_states=True, output_attentions=True)
    assert len(output.hidden_states) == 5 and output.hidden_states[0].shape == (
        3,
        65,
        64,
    )
    assert len(output.attentions) == 4 and output.attentions[0].shape == (3, 4, 65, 65)
    assert torch.allclose(output.attentions[0].sum(-1), torch.ones(3, 4, 65))
    logits = model(PIXELS, return_dict=False)[0]
    assert torch.equal(logits, output.logits)


def test_eager_and_sdpa_attention_agree(make_model):
    eager = make_model(attn_implementation="eager")
    sdpa = make_model(attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        difference = (eager(PIXELS).logits - sdpa(PIXELS).logits).abs().max().item()
    assert difference <= 1e-5


def test_gradient_checkpointing_recomputes_each_block_in_backward_and_gives_the_same_gradients(make_model):
    def gradients(model):
        # Each block's attention runs inside the block's (checkpointed) forward: count its calls per block.
        calls = [0] * len(model.vit.layers)
        for index, layer in enumerate(model.vit.layers):
            layer.attention.register_forward_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
        model.train()
        loss = model(PIXELS, labels=torch.tensor([0, 1, 2])).loss
        in_forward = list(calls)
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}, in_forward, calls

    plain, plain_forward, plain_total = gradients(make_model("grouped"))
    assert plain_forward == plain_total == [1, 1, 1, 1]
    model = make_model("grouped")
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.vit.layers)
    checkpointed, in_forward, in_total = gradients(model)
    # Checkpointing keeps no block's activations: backward runs every block's forward once more.
    assert in_forward == [1, 1, 1, 1] and in_total == [2, 2, 2, 2]
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


@pytest.mark.parametrize("height, width", [(48, 40), (16, 16)])
def test_interpolated_position_encoding_is_timm_s_bicubic_resample(make_model, height, width):
    model = make_model()
    embeddings = model.vit.embeddings  # 32 px, patch 4: an 8 x 8 grid
    with torch.no_grad():
        embeddings.position_embeddings.copy_(torch.randn(1, 65, 64, generator=torch.Generator().manual_seed(0)))
        resized = embeddings.interpolate_pos_encoding(height, width)
    # timm's resize, without its antialiasing (which Transformers' ViT, and so ours, does not apply).
    expected = resample_abs_pos_embed(
        embeddings.position_embeddings.detach(),
        new_size=[height // 4, width // 4],
        old_size=[8, 8],
        num_prefix_tokens=1,
        interpolation="bicubic",
        antialias=False,
    )
    assert resized.shape == expected.shape == (1, 1 + (height // 4) * (width // 4), 64)
    assert torch.allclose(resized, expected, atol=1e-6)
    if height == width:  # --image_size: the model itself at another size, classifier and encoder alike
        for at_size in (model.at_image_size(height).vit, model.vit.at_image_size(height)):
            assert at_size.config.image_size == height
            assert torch.allclose(at_size.embeddings.position_embeddings, expected, atol=1e-6)


def test_interpolated_position_encoding_and_size_error(make_model):
    model = make_model()
    larger = torch.randn(1, 3, 48, 48)
    assert model(larger, interpolate_pos_encoding=True).logits.shape == (1, 10)
    with pytest.raises(ValueError, match=r"48\*48.*32\*32"):
        model(larger)


@pytest.mark.slow  # compiling takes seconds
@pytest.mark.parametrize(
    "options", [{}, MODEL_OPTIONS["distilled"], MODEL_OPTIONS["map"]], ids=["vit", "distilled", "map"]
)
def test_fullgraph_compile_has_no_graph_break(make_model, options):
    model = make_model("grouped", drop_path_rate=0.1, **options)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(PIXELS).logits, model(PIXELS).logits, atol=1e-6)
    model.train()
    compiled(PIXELS, labels=torch.tensor([0, 1, 2])).loss.backward()
    assert model.vit.layers[1].mlp.fc1.weight.grad is not None


@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_save_load_round_trip(make_model, tmp_path, strategy):
    model = make_model(strategy)
    model.save_pretrained(tmp_path)
    loaded, info = AutoModelForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is ViTReducedForImageClassification
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.config.reduction_strategy == strategy
    with torch.no_grad():
        assert torch.equal(loaded.eval()(PIXELS).logits, model(PIXELS).logits)
    assert mlp_calls_per_forward(loaded) == mlp_calls_per_forward(model)


def test_save_and_load_of_a_shared_layout_warn_nothing(make_model, tmp_path):
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = transformers_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            make_model("grouped").save_pretrained(tmp_path)
            ViTReducedForImageClassification.from_pretrained(tmp_path)
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == []


def test_grouped_checkpoint_stores_each_shared_tensor_once(make_model, tmp_path):
    make_model("baseline").save_pretrained(tmp_path / "baseline")
    make_model("grouped").save_pretrained(tmp_path / "grouped")
    with safe_open(tmp_path / "grouped" / "model.safetensors", "pt") as f:
        mlp_keys = sorted(key for key in f.keys() if ".mlp." in key)  # noqa: SIM118
    assert mlp_keys == sorted(
        f"vit.layers.{i}.mlp.{p}" for i in (0, 2) for p in ("fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight")
    )
    sizes = {name: os.path.getsize(tmp_path / name / "model.safetensors") for name in ("baseline", "grouped")}
    model = make_model("baseline")
    expected = 1 - 2 * sum(p.numel() for p in model.vit.layers[0].mlp.parameters()) / model.num_parameters()
    assert sizes["grouped"] / sizes["baseline"] == pytest.approx(expected, rel=0.01)


def test_auto_classes_after_import(make_model):
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}
    config = AutoConfig.for_model("vit_reduced", reduction_strategy="thin", **small)
    assert type(config) is ViTReducedConfig
    assert type(AutoModel.from_config(config)) is ViTReducedModel
    assert type(AutoModelForImageClassification.from_config(config)) is ViTReducedForImageClassification


def test_saved_folder_carries_code_and_auto_map(make_model, tmp_path):
    make_model("grouped").save_pretrained(tmp_path)
    # The loading policy is a relative import of the modeling file, which Transformers copies with it.
    assert {"configuration_vit_reduced.py", "modeling_vit_reduced.py", "loading_vit_reduced.py"} <= set(
        os.listdir(tmp_path)
    )
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_vit_reduced.ViTReducedConfig",
        "AutoModel": "modeling_vit_reduced.ViTReducedModel",
        "AutoModelForImageClassification": "modeling_vit_reduced.ViTReducedForImageClassification",
    }


@pytest.mark.slow
def test_remote_code_loads_without_the_package_and_keeps_the_architecture_guard(make_model, tmp_path):
    model = make_model("grouped")
    model.save_pretrained(tmp_path / "model")
    make_model("shallow").save_pretrained(tmp_path / "shallow")
    # The ViT family's options run as remote code too.
    families = [make_model("grouped", **MODEL_OPTIONS["distilled"]), make_model("thin", **MODEL_OPTIONS["map"])]
    families.append(make_model(**MODEL_OPTIONS["registers_layer_scale"], pre_norm=True, hidden_act="quick_gelu"))
    for index, family in enumerate(families):
        family.save_pretrained(tmp_path / f"family{index}")
    with torch.no_grad():
        expected = model(PIXELS).logits
        expected_families = [family(PIXELS).logits for family in families]
    torch.save(PIXELS, tmp_path / "pixels.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_vit_reduction"] = None  # as if the package were not installed
        try:
            import hf_vit_reduction
        except ImportError:
            pass
        else:
            raise SystemExit("the package is importable")
        import torch
        from transformers import AutoModel, AutoModelForImageClassification
        path = {str(tmp_path / "model")!r}
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
        encoder = AutoModel.from_pretrained(path, trust_remote_code=True)
        assert type(encoder).__name__ == "ViTReducedModel" and encoder.layers[1].mlp is encoder.layers[0].mlp
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "pixels.pt")!r})).logits, {str(tmp_path / "out.pt")!r})
            for index in range({len(families)}):
                family = AutoModelForImageClassification.from_pretrained(
                    {str(tmp_path)!r} + f"/family{{index}}", trust_remote_code=True
                ).eval()
                pixels = torch.load({str(tmp_path / "pixels.pt")!r})
                torch.save(family(pixels).logits, {str(tmp_path)!r} + f"/family{{index}}.pt")
        shallow = {str(tmp_path / "shallow")!r}
        for load in (
            lambda: AutoModelForImageClassification.from_pretrained(
                shallow, trust_remote_code=True, reduction_strategy="thin"
            ),
            lambda: type(model).from_pretrained(shallow, reduction_strategy="thin"),
        ):
            try:
                load()
            except ValueError as error:
                assert "reduction_strategy='thin' but the checkpoint has 'shallow'" in str(error), error
            else:
                raise SystemExit("a shallow checkpoint loaded as thin")
        """
    )
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Another process, another thread count: the same function, within float rounding.
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=1e-6, rtol=1e-5)
    for index, logits in enumerate(expected_families):
        torch.testing.assert_close(torch.load(tmp_path / f"family{index}.pt"), logits, atol=1e-6, rtol=1e-5)


def test_pipeline_classifies_an_image(make_model, tmp_path):
    labels = [str(i) for i in range(10)]
    model = make_model(
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(tmp_path)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    image = Image.fromarray((PIXELS[0].permute(1, 2, 0).clamp(-1, 1).add(1).mul(127.5)).byte().numpy())
    predictions = classifier(image, top_k=10)
    assert len(predictions) == 10 and predictions[0]["label"] in labels
    assert all(first["score"] >= second["score"] > 0 for first, second in pairwise(predictions))
    # The scores are the softmax of the model's logits on the processor's output, each under its own label.
    with torch.no_grad():
        probabilities = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    scores = {prediction["label"]: prediction["score"] for prediction in predictions}
    assert scores == pytest.approx({labels[i]: float(p) for i, p in enumerate(probabilities)}, abs=1e-6)


def test_loading_another_strategy_or_shape_fails_clearly(make_model, tmp_path):
    make_model("baseline").save_pretrained(tmp_path / "baseline")
    with pytest.raises(
        ValueError,
        match=r"reduction_strategy='grouped' but the checkpoint has 'baseline'",
    ):
        ViTReducedForImageClassification.from_pretrained(tmp_path / "baseline", reduction_strategy="grouped")
    other = ViTReducedConfig.from_preset("digits", reduction_strategy="shallow", num_labels=10)
    with pytest.raises(ValueError, match=r"reduction_strategy='shallow'"):
        ViTReducedForImageClassification.from_pretrained(tmp_path / "baseline", config=other)
    with pytest.raises(ValueError, match=r"hidden_size=32"):
        ViTReducedForImageClassification.from_pretrained(tmp_path / "baseline", hidden_size=32, num_attention_heads=4)


def test_plain_checkpoint_under_a_grouped_name_fails(make_model, tmp_path):
    make_model("baseline").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(reduction_strategy="grouped", reduction_mlp_ratio=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unexpected keys: vit\.layers\.1\.mlp"):
        ViTReducedForImageClassification.from_pretrained(tmp_path)


def test_grouped_checkpoint_under_a_baseline_name_fails(make_model, tmp_path):
    # Weights whose keys do not fit (e.g. a config edited by hand) are an error, never a partial load.
    make_model("grouped").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(reduction_strategy="baseline", reduction_mlp_ratio=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing keys: vit\.layers\.1\.mlp"):
        ViTReducedForImageClassification.from_pretrained(tmp_path)


def test_a_transformers_vit_checkpoint_points_to_the_converter(tmp_path):
    ViTForImageClassification(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'vit' checkpoint.*`hf-vit-reduction convert`"):
        ViTReducedForImageClassification.from_pretrained(tmp_path)


def test_new_head_with_ignore_mismatched_sizes(make_model, tmp_path):
    model = make_model("shallow")
    model.save_pretrained(tmp_path)
    loaded = ViTReducedForImageClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    assert loaded.classifier.weight.shape == (3, 64)
    assert torch.equal(loaded.vit.layers[0].mlp.fc1.weight, model.vit.layers[0].mlp.fc1.weight)
    encoder = ViTReducedModel.from_pretrained(tmp_path)
    assert torch.equal(encoder.layers[3].mlp.fc2.weight, model.vit.layers[3].mlp.fc2.weight)


# --- What each block owns, and what sharing means for parameters, state dicts and freezing --------------------------


def test_each_block_owns_its_mlp_and_grouped_blocks_hold_the_same_one(make_model):
    baseline, grouped = make_model("baseline"), make_model("grouped")
    for layer in baseline.vit.layers:
        assert {name for name, _ in layer.named_parameters()} >= {"mlp.fc1.weight", "mlp.fc2.bias"}
    assert len({id(layer.mlp) for layer in baseline.vit.layers}) == 4
    layers = grouped.vit.layers
    assert layers[1].mlp is layers[0].mlp and layers[3].mlp is layers[2].mlp and layers[2].mlp is not layers[0].mlp
    # named_parameters() lists a shared tensor once, under its group's first block; state_dict() under every block.
    parameters = [name for name, _ in grouped.named_parameters() if ".mlp." in name]
    assert parameters == [
        f"vit.layers.{i}.mlp.{p}" for i in (0, 2) for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    ]
    state = grouped.state_dict()
    assert [name for name in state if ".fc1." in name or ".fc2." in name] == [
        f"vit.layers.{i}.mlp.{p}" for i in range(4) for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    ]
    assert state["vit.layers.1.mlp.fc1.weight"].data_ptr() == state["vit.layers.0.mlp.fc1.weight"].data_ptr()
    # Freezing a block freezes what it computes with, the shared MLP included (its group's other block uses it too).
    for parameter in grouped.vit.layers[1].parameters():
        parameter.requires_grad_(False)
    assert not grouped.vit.layers[0].mlp.fc1.weight.requires_grad
    assert grouped.vit.layers[0].attention.qkv.weight.requires_grad


def test_init_matches_transformers_common_test_seeding(monkeypatch):
    # As Transformers' test_can_init_all_missing_weights: the global RNG is re-seeded right before each module's init.
    from transformers import PreTrainedModel, set_seed

    original = PreTrainedModel._initialize_weights

    def seeded(self, module, is_custom_code=False):
        set_seed(0)
        original(self, module, is_custom_code)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    for strategy in REDUCTION_STRATEGIES:
        config = ViTReducedConfig.from_preset("digits", reduction_strategy=strategy, num_labels=10)
        built = ViTReducedForImageClassification(config)
        loaded = ViTReducedForImageClassification.from_pretrained(None, config=config, state_dict={})
        built_state, loaded_state = built.state_dict(), loaded.state_dict()
        assert built_state.keys() == loaded_state.keys()
        assert all(torch.equal(built_state[key], loaded_state[key]) for key in built_state), strategy
        assert not any(parameter.is_meta for parameter in loaded.parameters())


@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_init_follows_the_global_rng_at_init_time(strategy):
    config = ViTReducedConfig.from_preset("digits", reduction_strategy=strategy, num_labels=10)
    torch.manual_seed(5)
    built = ViTReducedForImageClassification(config)
    torch.manual_seed(5)
    loaded = ViTReducedForImageClassification.from_pretrained(None, config=config, state_dict={})
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in built.state_dict().items())
    torch.manual_seed(6)
    other = ViTReducedForImageClassification(config)
    assert not torch.equal(other.vit.layers[0].mlp.fc1.weight, built.vit.layers[0].mlp.fc1.weight)


# --- Loading contract ---------------------------------------------------------------------------------------------


def test_from_pretrained_with_a_state_dict_and_no_path(make_model):
    model = make_model("grouped")
    loaded = ViTReducedForImageClassification.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    assert loaded.vit.layers[1].mlp is loaded.vit.layers[0].mlp
    with torch.no_grad():
        assert torch.equal(loaded.eval()(PIXELS).logits, model(PIXELS).logits)
    partial = {key: value for key, value in model.state_dict().items() if "layers.3" not in key}
    with pytest.raises(ValueError, match=r"the given state dict .*missing keys: vit\.layers\.3"):
        ViTReducedForImageClassification.from_pretrained(None, config=model.config, state_dict=partial)


def test_a_plain_state_dict_never_loads_silently_into_a_grouped_layout(make_model):
    plain = make_model("baseline").state_dict()
    grouped_config = make_model("grouped").config
    with pytest.raises(ValueError, match=r"unexpected keys: vit\.layers\.1\.mlp.*one MLP per group"):
        ViTReducedForImageClassification.from_pretrained(None, config=grouped_config, state_dict=plain)


def test_output_loading_info_returns_a_partial_load_instead_of_raising(make_model, tmp_path, caplog):
    make_model("grouped").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(reduction_strategy="baseline", reduction_mlp_ratio=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing keys: vit\.layers\.1\.mlp"):
        ViTReducedForImageClassification.from_pretrained(tmp_path)
    model, info = ViTReducedForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert type(model) is ViTReducedForImageClassification
    assert sorted(info["missing_keys"])[:2] == ["vit.layers.1.mlp.fc1.bias", "vit.layers.1.mlp.fc1.weight"]
    assert len(info["missing_keys"]) == 8


def test_forward_kwargs_are_typed_as_transformers_models_type_them():
    from transformers.processing_utils import Unpack
    from transformers.utils import TransformersKwargs

    for model_class in (ViTReducedModel, ViTReducedForImageClassification):
        kwargs = inspect.signature(model_class.forward).parameters["kwargs"]
        assert kwargs.annotation == Unpack[TransformersKwargs]


def test_pooler_output_is_the_final_cls_token_and_feeds_feature_extraction(make_model, tmp_path):
    model = make_model("shallow")
    with torch.no_grad():
        output = model.vit(PIXELS)
    assert torch.equal(output.pooler_output, output.last_hidden_state[:, 0])
    assert torch.allclose(model.classifier(output.pooler_output), model(PIXELS).logits)
    model.save_pretrained(tmp_path)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    pooled = torch.tensor(extractor(image, pool=True))
    assert pooled.shape == (1, 64)
    with torch.no_grad():
        expected = model.vit(**processor(image, return_tensors="pt")).pooler_output
    assert torch.allclose(pooled, expected, atol=1e-5)


def test_set_input_embeddings_replaces_the_patch_projection(make_model):
    model = make_model()
    projection = torch.nn.Conv2d(3, 64, kernel_size=4, stride=4)
    model.set_input_embeddings(projection)
    assert model.get_input_embeddings() is projection and model.vit.embeddings.projection is projection


@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_offloaded_inference_equals_in_memory_inference(make_model, tmp_path, strategy):
    model = make_model(strategy)
    model.save_pretrained(tmp_path / "model")
    size = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    offloaded = ViTReducedForImageClassification.from_pretrained(
        tmp_path / "model",
        device_map="auto",
        max_memory={"cpu": int(size * 0.9)},
        offload_folder=tmp_path / "offload",
    )
    placements = set(offloaded.hf_device_map.values())
    assert placements == {"cpu", "disk"}, offloaded.hf_device_map
    with torch.no_grad():
        assert torch.equal(offloaded(PIXELS).logits, model(PIXELS).logits)


# --- The ViT family's options: Transformers' common checks for each, and what each computes ------------------------

OPTION_IDS = list(MODEL_OPTIONS)
OPTIONS = list(MODEL_OPTIONS.values())


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_options_save_load_round_trip_under_every_strategy(make_model, tmp_path, options, strategy):
    model = make_model(strategy, **options)
    model.save_pretrained(tmp_path)
    loaded, info = AutoModelForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert {field: getattr(loaded.config, field) for field in options} == options
    with torch.no_grad():
        assert torch.equal(loaded.eval()(PIXELS).logits, model(PIXELS).logits)
    assert mlp_calls_per_forward(loaded) == mlp_calls_per_forward(model)
    # LayerScale belongs to the block: a grouped model shares its MLPs only.
    if "layer_scale_init_value" in options and strategy == "grouped":
        layers = loaded.vit.layers
        assert layers[1].mlp is layers[0].mlp and layers[1].layer_scale2 is not layers[0].layer_scale2
        assert layers[1].layer_scale2.gamma.data_ptr() != layers[0].layer_scale2.gamma.data_ptr()


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_options_init_matches_transformers_common_test_seeding(monkeypatch, options):
    from transformers import PreTrainedModel, set_seed

    original = PreTrainedModel._initialize_weights

    def seeded(self, module, is_custom_code=False):
        set_seed(0)
        original(self, module, is_custom_code)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    config = ViTReducedConfig.from_preset("digits", reduction_strategy="grouped", num_labels=10, **options)
    built = ViTReducedForImageClassification(config)
    loaded = ViTReducedForImageClassification.from_pretrained(None, config=config, state_dict={})
    assert built.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in built.state_dict().items())
    assert not any(parameter.is_meta for parameter in loaded.parameters())


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_options_eager_sdpa_hidden_states_and_attentions(make_model, options):
    eager = make_model(attn_implementation="eager", **options)
    sdpa = make_model(attn_implementation="sdpa", **options)
    tokens = 64 + eager.config.num_prefix_tokens  # an 8 x 8 grid and the prefix tokens
    output = eager(PIXELS, output_hidden_states=True, output_attentions=True)
    assert len(output.hidden_states) == 5 and output.hidden_states[-1].shape == (3, tokens, 64)
    assert len(output.attentions) == 4 and output.attentions[0].shape == (3, 4, tokens, tokens)
    with torch.no_grad():
        assert max_difference(eager(PIXELS).logits, sdpa(PIXELS).logits) <= 1e-5
        larger = torch.randn(1, 3, 48, 48)
        assert sdpa(larger, interpolate_pos_encoding=True).logits.shape == (1, 10)


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_options_gradient_checkpointing_gives_the_same_gradients(make_model, options):
    def gradients(model):
        model.train()
        model(PIXELS, labels=torch.tensor([0, 1, 2])).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients(make_model("grouped", **options))
    model = make_model("grouped", **options)
    model.activation_checkpointing_enable()
    checkpointed = gradients(model)
    assert plain.keys() == checkpointed.keys() == {name for name, _ in model.named_parameters()}
    assert all(torch.allclose(plain[name], checkpointed[name], atol=1e-6) for name in plain)


def test_options_that_are_off_create_nothing_and_draw_nothing(make_model):
    # Today's ViT: the same keys as before the options existed, so saved models load unchanged.
    model = make_model()
    assert [key for key in model.state_dict() if not key.startswith("vit.layers.")] == [
        "vit.embeddings.cls_token",
        "vit.embeddings.position_embeddings",
        "vit.embeddings.projection.weight",
        "vit.embeddings.projection.bias",
        "vit.layernorm.weight",
        "vit.layernorm.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    assert {key.split(".", 3)[3] for key in model.state_dict() if key.startswith("vit.layers.")} == {
        f"{module}.{part}"
        for module in ("layernorm_before", "attention.qkv", "attention.proj", "layernorm_after", "mlp.fc1", "mlp.fc2")
        for part in ("weight", "bias")
    }
    # Options whose weights need no random draw (LayerScale, pre-norm, fc_norm) leave the others' init unchanged.
    drawn = make_model(layer_scale_init_value=0.5, pre_norm=True, hidden_act="quick_gelu").state_dict()
    assert all(torch.equal(value, drawn[key]) for key, value in model.state_dict().items())
    assert torch.all(drawn["vit.layers.2.layer_scale2.gamma"] == 0.5)


def test_options_init_follows_timm(make_model):
    model = make_model(distillation_token=True, num_register_tokens=64, pooling="token")
    embeddings = model.vit.embeddings
    assert embeddings.distillation_token.std().item() == pytest.approx(0.02, rel=0.5)  # 64 draws
    assert embeddings.register_tokens.std().item() == pytest.approx(1e-6, rel=0.1)
    assert embeddings.position_embeddings.shape == (1, 64 + 1 + 1 + 64, 64)
    latent = make_model(pooling="map").vit.attention_pool.latent
    assert latent.std().item() == pytest.approx(64**-0.5 * 0.88, rel=0.25)  # truncated at two std, as timm's
    assert latent.abs().max().item() <= 2 * 64**-0.5


def test_distilled_logits_are_the_mean_of_the_class_and_distillation_heads(make_model):
    model = make_model(distillation_token=True)
    with torch.no_grad():
        output = model(PIXELS, labels=torch.tensor([1, 2, 3]))
        tokens = model.vit(PIXELS).last_hidden_state
    cls_logits = tokens[:, 0] @ model.classifier.weight.T + model.classifier.bias
    distillation_logits = tokens[:, 1] @ model.distillation_classifier.weight.T + model.distillation_classifier.bias
    torch.testing.assert_close(output.cls_logits, cls_logits)
    torch.testing.assert_close(output.distillation_logits, distillation_logits)
    torch.testing.assert_close(output.logits, (cls_logits + distillation_logits) / 2)
    assert output.loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(output.logits, torch.tensor([1, 2, 3])).item()
    )
    assert make_model()(PIXELS).distillation_logits is None


def test_average_pooling_and_fc_norm_and_pre_norm_placements(make_model):
    model = make_model(class_token=False, pooling="avg", fc_norm=True, pre_norm=True, layer_scale_init_value=0.0)
    encoder = model.vit
    with torch.no_grad():
        for norm in (encoder.pre_layernorm, encoder.layernorm):  # away from the identity, so that placement shows
            norm.weight.normal_(1, 0.5)
            norm.bias.normal_(0, 0.5)
        output = encoder(PIXELS)
        embedded = encoder.embeddings(PIXELS)
    # LayerScale at 0 turns every block into the identity: what is left is the embedding and the norms.
    assert embedded.shape == (3, 64, 64)  # no class token
    torch.testing.assert_close(output.last_hidden_state, encoder.pre_layernorm(embedded))  # fc_norm: no final norm
    pooled = torch.nn.functional.layer_norm(
        encoder.pre_layernorm(embedded).mean(dim=1), (64,), encoder.layernorm.weight, encoder.layernorm.bias, 1e-6
    )
    torch.testing.assert_close(output.pooler_output, pooled)


def test_no_embed_class_and_registers_place_the_position_embeddings(make_model):
    for no_embed_class in (False, True):
        model = make_model(num_register_tokens=2, no_embed_class=no_embed_class)
        embeddings = model.vit.embeddings
        with torch.no_grad():
            embeddings.position_embeddings.normal_()
            tokens = embeddings(PIXELS)
        patches = embeddings.projection(PIXELS).flatten(2).transpose(1, 2)
        positions = embeddings.position_embeddings[0]
        prefix = torch.cat((embeddings.cls_token[0], embeddings.register_tokens[0]))
        if no_embed_class:
            assert positions.shape[0] == 64
            torch.testing.assert_close(tokens[0, :3], prefix)
            torch.testing.assert_close(tokens[0, 3:], patches[0] + positions)
        else:
            assert positions.shape[0] == 67
            torch.testing.assert_close(tokens[0], torch.cat((prefix, patches[0])) + positions)


def test_map_pooling_is_timms_attention_pool(make_model):
    from timm.layers import AttentionPoolLatent, QuickGELU

    model = make_model(class_token=False, pooling="map", hidden_act="quick_gelu")
    ours = model.vit.attention_pool
    theirs = AttentionPoolLatent(64, num_heads=4, mlp_ratio=4.0, norm_layer=torch.nn.LayerNorm, act_layer=QuickGELU)
    theirs.norm.eps = 1e-6
    renames = {"ffn_fc1": "mlp.fc1", "ffn_fc2": "mlp.fc2"}
    state = {}
    for key, value in ours.state_dict().items():
        module, part = key.rsplit(".", 1) if "." in key else (key, None)
        state[".".join(filter(None, (renames.get(module, module), part)))] = value
    theirs.load_state_dict(state)
    tokens = torch.randn(3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), theirs.eval()(tokens), atol=1e-5, rtol=1e-5)
        sequence = model.vit(PIXELS).last_hidden_state
        torch.testing.assert_close(model.vit(PIXELS).pooler_output, theirs(sequence), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "saved, requested, message",
    [
        ({"layer_scale_init_value": 0.1}, {"layer_scale_init_value": None}, "layer_scale_init_value=None"),
        ({"class_token": False, "pooling": "avg"}, {"class_token": False, "pooling": "map"}, "pooling='map'"),
        ({}, {"hidden_act": "quick_gelu"}, "hidden_act='quick_gelu' but the checkpoint has 'gelu'"),
        ({}, {"fc_norm": True}, "fc_norm=True but the checkpoint has False"),
    ],
)
def test_loading_with_other_options_fails_clearly(make_model, tmp_path, saved, requested, message):
    # Pooling, the activation and the norm's place change no weight key: strict loading compares them all.
    make_model(**saved).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        ViTReducedForImageClassification.from_pretrained(tmp_path, **requested)


def test_a_model_saved_before_the_options_existed_loads_as_todays_vit(make_model, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for field in ("class_token", "distillation_token", "num_register_tokens", "no_embed_class"):
        del config[field]
    for field in ("layer_scale_init_value", "pre_norm", "pooling", "fc_norm"):
        del config[field]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = ViTReducedForImageClassification.from_pretrained(tmp_path)
    assert (loaded.config.pooling, loaded.config.num_prefix_tokens) == ("token", 1)
    with torch.no_grad():
        assert torch.equal(loaded(PIXELS).logits, model(PIXELS).logits)
