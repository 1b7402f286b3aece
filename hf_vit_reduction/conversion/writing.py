"""What the conversion commands do around a model: refuse to overwrite a folder unasked, write a folder so that
nothing partial is left, and measure a model's logits against those it must equal."""

import os
import shutil
import tempfile
from pathlib import Path

import torch


def check_output_folder(output: Path, overwrite: bool, name: str = "--output_dir") -> None:
    """A ValueError naming `name` when `output` is a file, or a non-empty folder without `overwrite`."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"{name} {output} is a file; allowed: a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{name} {output} exists and is not empty; pass --overwrite_output_dir to replace it")


def write_folder(output: Path, write) -> None:
    """Run `write(folder)` on a staging folder beside `output`, then put it in place: nothing partial is left."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private
        write(staging)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@torch.no_grad()
def max_logit_difference(expected_logits, logits, model, batch_size: int = 2) -> float:
    """Largest difference between `expected_logits(pixels)` and `logits(pixels)` on `batch_size` random images of
    the size and dtype of `model` (a ViTReduced)."""
    config, weight = model.config, next(model.parameters())
    pixels = torch.randn(
        batch_size,
        config.num_channels,
        config.image_size,
        config.image_size,
        generator=torch.Generator().manual_seed(0),
    ).to(weight)  # a bfloat16 checkpoint stays bfloat16
    return (logits(pixels).float() - expected_logits(pixels).float()).abs().max().item()
