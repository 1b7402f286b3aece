import pytest
import torch

from hf_vit_reduction import REDUCTION_STRATEGIES, ViTReducedConfig, summarize
from hf_vit_reduction.summary import main

# The paper's Table 2 (ViT-B/16, 224 px, 1000 classes).
TABLE_2 = {
    "baseline": (86_567_656, 56_669_184, 12, 16.87, 35.17),
    "grouped": (58_233_064, 28_334_592, 6, 16.87, 35.17),
    "shallow": (58_237_672, 28_339_200, 12, 11.29, 24.01),
    "thin": (58_237_672, 28_339_200, 12, 11.29, 24.01),
}


@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_table_2_figures(strategy):
    summary = summarize(ViTReducedConfig(reduction_strategy=strategy, num_labels=1000))
    parameters, mlp_parameters, unique_mlps, gmacs, gflops = TABLE_2[strategy]
    assert summary["num_parameters"] == parameters
    assert summary["mlp_parameters"] == mlp_parameters
    assert summary["unique_mlps"] == unique_mlps
    assert round(summary["gmacs"], 2) == gmacs
    assert round(summary["gflops"], 2) == gflops
    assert summary["expansion_ratio"] == (4.0 if strategy in ("baseline", "grouped") else 2.0)


def test_exact_macs_of_vit_b16_baseline():
    # 12 blocks x (197 tokens x 768 x (4 x 768 + 2 x 3072) + 2 LayerNorms x 5 x 197 x 768), patch embedding,
    # final LayerNorm and head; attention matmuls 12 x 2 x 197^2 x 768 count only in the true FLOPs.
    summary = summarize(ViTReducedConfig(num_labels=1000))
    assert summary["gmacs"] * 1e9 == pytest.approx(16_867_412_736)
    assert summary["gflops"] * 1e9 == pytest.approx(2 * (16_867_412_736 + 715_327_488))


def test_model_and_config_summaries_agree(make_model):
    model = make_model("grouped")
    assert summarize(model) == summarize(model.config)
    assert summarize(model.vit)["num_parameters"] == model.num_parameters() - (64 * 10 + 10)


def test_command_prints_table_2(capsys):
    main([])
    out = capsys.readouterr().out
    assert "| ViT-B/16 grouped | grouped | 58,233,064 | 28,334,592 | 6 | 3072 | 4.00 | 16.87 | 35.17 |" in out
    assert "| ViT-B/16 shallow | shallow | 58,237,672 | 28,339,200 | 12 | 1536 | 2.00 | 11.29 | 24.01 |" in out


def test_command_summarizes_a_saved_model(make_model, tmp_path, capsys):
    model = make_model("thin")
    model.save_pretrained(tmp_path)
    main([str(tmp_path), "--json"])
    out = capsys.readouterr().out
    assert f'"num_parameters": {model.num_parameters()}' in out
    assert '"strategy": "thin"' in out


def test_a_distilled_deit_counts_both_tokens_and_heads():
    import timm

    summary = summarize(ViTReducedConfig(distillation_token=True, num_labels=1000))
    with torch.device("meta"):
        deit = timm.create_model("deit_base_distilled_patch16_224", pretrained=False)
    assert summary["num_parameters"] == sum(p.numel() for p in deit.parameters())
    # 198 tokens: the class and distillation tokens and 196 patches; two heads.
    tokens, blocks = 198, 12 * (198 * 768 * (4 * 768 + 2 * 3072) + 2 * 5 * 198 * 768)
    expected = blocks + 196 * 768 * 3 * 16 * 16 + 5 * tokens * 768 + 2 * 768 * 1000
    assert summary["gmacs"] * 1e9 == pytest.approx(expected)
