"""Parameter and compute summary of a ViTReduced model: the paper's Table 2.

`hf-vit-reduction summary` prints Table 2 for ViT-B/16; `hf-vit-reduction summary DIR ...`
summarizes saved models.
"""

import argparse
import json

import torch

from .cli import command_parser
from .configuration_vit_reduced import REDUCTION_STRATEGIES, ViTReducedConfig
from .modeling_vit_reduced import ViTReducedForImageClassification, ViTReducedModel


def _macs(config: ViTReducedConfig, num_labels: int) -> tuple[int, int]:
    """(MACs in the paper's convention, MACs of the attention matmuls) of one image's forward pass."""
    patches = (config.image_size // config.patch_size) ** 2
    tokens = patches + config.num_prefix_tokens
    width, mlp_width = config.hidden_size, config.mlp_hidden_size
    layernorm = 5 * tokens * width  # the paper's (fvcore-style) count: 5 operations per element
    patch_embedding = patches * width * config.num_channels * config.patch_size**2
    block = tokens * width * (3 * width + width + 2 * mlp_width) + 2 * layernorm
    heads = 2 if config.distillation_token else 1
    paper = patch_embedding + config.num_hidden_layers * block + layernorm + heads * width * num_labels
    attention = config.num_hidden_layers * 2 * tokens * tokens * width
    if config.pre_norm:
        paper += layernorm
    if config.pooling == "map":
        # One query: its projection, keys and values of the patches, the output projection, the unreduced MLP.
        paper += width * (width + 2 * patches * width + width + 2 * config.intermediate_size) + 5 * width
        attention += 2 * patches * width
    return paper, attention


def summarize(
    model_or_config: ViTReducedModel | ViTReducedForImageClassification | ViTReducedConfig,
) -> dict:
    """Parameters, MLP parameters, unique MLPs, expansion ratio, GMACs (paper convention) and GFLOPs (true)."""
    if isinstance(model_or_config, ViTReducedConfig):
        with torch.device("meta"):
            model = ViTReducedForImageClassification(model_or_config)
    else:
        model = model_or_config
    config = model.config
    encoder = model.vit if isinstance(model, ViTReducedForImageClassification) else model
    num_labels = config.num_labels if isinstance(model, ViTReducedForImageClassification) else 0
    paper_macs, attention_macs = _macs(config, num_labels)
    # The blocks of a grouped model's group hold the same MLP module.
    unique_mlps = list({id(layer.mlp): layer.mlp for layer in encoder.layers}.values())
    return {
        "strategy": config.reduction_strategy,
        "reduction_mlp_ratio": config.reduction_mlp_ratio,
        "num_parameters": model.num_parameters(),
        "mlp_parameters": sum(p.numel() for mlp in unique_mlps for p in mlp.parameters()),
        "unique_mlps": len(unique_mlps),
        "num_layers": config.num_hidden_layers,
        "mlp_hidden_size": config.mlp_hidden_size,
        "expansion_ratio": config.mlp_hidden_size / config.hidden_size,
        "gmacs": paper_macs / 1e9,
        "gflops": 2 * (paper_macs + attention_macs) / 1e9,
    }


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table of summaries, one row per (name, summary)."""
    lines = [
        "| model | strategy | parameters | MLP parameters | unique MLPs | MLP width | expansion | GMACs (paper) | GFLOPs (true) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['strategy']} | {s['num_parameters']:,} | {s['mlp_parameters']:,} | {s['unique_mlps']} | "
            f"{s['mlp_hidden_size']} | {s['expansion_ratio']:.2f} | {s['gmacs']:.2f} | {s['gflops']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "models",
        nargs="*",
        help="saved model folders; none prints Table 2 for ViT-B/16",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args(argv)
    if args.models:
        rows = [(path, summarize(ViTReducedForImageClassification.from_pretrained(path))) for path in args.models]
    else:
        rows = [
            (
                f"ViT-B/16 {strategy}",
                summarize(ViTReducedConfig(reduction_strategy=strategy, num_labels=1000)),
            )
            for strategy in REDUCTION_STRATEGIES
        ]
    print(json.dumps(dict(rows), indent=2) if args.json else format_table(rows))
