"""How much of a converted model's output a post-hoc reduction keeps (issue 5, README numbers).

Trains (AdamW 1e-3, one-cycle, batch 32, 60 epochs, no augmentation) a timm ViT of the `digits` preset's size on scikit-learn's embedded 8x8 digits (upscaled to 32 px), converts
it with `from_timm`, reduces the converted baseline with every post-hoc method (the calibrated ones on 256 training
images drawn with the seed), and reports on the held-out split:
accuracy, top-1 agreement with the converted baseline, and the mean cosine similarity of the logits.

    hf-vit-reduction reduction-quality [--seeds 0 1 2] [--epochs 60] [--json out.json]
"""

import json
import math
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..cli import command_parser
from ..conversion import from_timm, reduce
from ..conversion.calibration import DEFAULT_CALIBRATION_SAMPLES, Calibration


def digits(seed: int = 0):
    """(train, test) tensors, a stratified 80/20 split: 8x8 digits, nearest-upscaled to 32x32, 3 channels, scaled to [-1, 1]."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16 * 2 - 1
    images = images.repeat_interleave(4, 1).repeat_interleave(4, 2)
    images = images[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(data.target)
    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=data.target)
    return (images[train], labels[train]), (images[test], labels[test])


def digits_sized_timm_vit(seed: int):
    """A timm ViT of the `digits` preset's size (32 px, patch 4, width 64, 4 blocks, 4 heads, MLP 256), seeded."""
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=4,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=4,
        num_classes=10,
    )


def train_timm(train, seed: int, epochs: int):
    model = digits_sized_timm_vit(seed)
    images, labels = train
    steps_per_epoch = math.ceil(len(labels) / 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-3, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 32):
            batch = order[start : start + 32]
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def evaluate(model, reference_logits, test):
    images, labels = test
    logits = model(images).logits
    return {
        "accuracy": (logits.argmax(-1) == labels).float().mean().item(),
        "top1_agreement": (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item(),
        "logit_cosine": F.cosine_similarity(logits, reference_logits, dim=-1).mean().item(),
    }


REDUCTIONS = {
    "shallow 0.75 first": {"strategy": "shallow", "reduction_mlp_ratio": 0.75},
    "shallow 0.75 magnitude": {
        "strategy": "shallow",
        "reduction_mlp_ratio": 0.75,
        "prune_method": "magnitude",
    },
    "shallow 0.5 first": {"strategy": "shallow"},
    "shallow 0.5 magnitude": {"strategy": "shallow", "prune_method": "magnitude"},
    "shallow 0.25 first": {"strategy": "shallow", "reduction_mlp_ratio": 0.25},
    "shallow 0.25 magnitude": {
        "strategy": "shallow",
        "reduction_mlp_ratio": 0.25,
        "prune_method": "magnitude",
    },
    "shallow 0.5 activation": {"strategy": "shallow", "prune_method": "activation"},
    "shallow 0.5 taylor": {"strategy": "shallow", "prune_method": "taylor"},
    "shallow 0.25 activation": {"strategy": "shallow", "reduction_mlp_ratio": 0.25, "prune_method": "activation"},
    "shallow 0.25 taylor": {"strategy": "shallow", "reduction_mlp_ratio": 0.25, "prune_method": "taylor"},
    "grouped leader": {"strategy": "grouped"},
    "grouped mean": {"strategy": "grouped", "share_method": "mean"},
    "grouped aligned": {"strategy": "grouped", "share_method": "aligned"},
}


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("reduction-quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results = {}
    for seed in args.seeds:
        train, test = digits(seed)
        start = time.time()
        source = train_timm(train, seed, args.epochs)
        model = from_timm(source)
        with torch.no_grad():
            source_logits = source(test[0])
            logits = model(test[0]).logits
        difference = (logits - source_logits).abs().max().item()
        rows = {"converted baseline": evaluate(model, source_logits, test)}
        chosen = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(seed))
        chosen = chosen[:DEFAULT_CALIBRATION_SAMPLES]
        calibration = Calibration(pixel_values=train[0][chosen], labels=train[1][chosen], source="digits train")
        for name, kwargs in REDUCTIONS.items():
            rows[name] = evaluate(reduce(model, **kwargs, calibration=calibration), logits, test)
        results[seed] = {
            "train_seconds": time.time() - start,
            "test_images": len(test[1]),
            "max_logit_difference_timm_vs_converted": difference,
            "rows": rows,
        }
        print(f"seed {seed}: trained in {time.time() - start:.0f} s, max |logit diff| {difference:.1e}")
        for name, row in rows.items():
            print(
                f"  {name:24s} acc {100 * row['accuracy']:5.1f}%  agree {100 * row['top1_agreement']:5.1f}%"
                f"  cos {row['logit_cosine']:.3f}"
            )
    names = list(results[args.seeds[0]]["rows"])
    print("\n| model | test accuracy | top-1 agreement with the baseline | logit cosine similarity |")
    print("|---|---:|---:|---:|")
    for name in names:
        cells = []
        for key, scale, fmt in (
            ("accuracy", 100, "{:.1f}%"),
            ("top1_agreement", 100, "{:.1f}%"),
            ("logit_cosine", 1, "{:.3f}"),
        ):
            values = [scale * results[s]["rows"][name][key] for s in args.seeds]
            mean, spread = np.mean(values), np.std(values)
            cells.append(fmt.format(mean) + " ± " + fmt.format(spread).rstrip("%") + ("%" if scale == 100 else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
