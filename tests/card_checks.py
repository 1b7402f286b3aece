"""What every model card must satisfy (issue 20), for the card tests and the tests of real runs."""

from pathlib import Path

from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor

# Flags that only mattered on the machine that ran: never on a card (issue 20).
RUN_ONLY_FLAGS = (
    "benchmark_loop",
    "benchmark_warmup",
    "overwrite_output_dir",
    "report_to",
    "push_to_hub",
    "hub_private_repo",
    "hub_strategy",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "eval_every",
    "workers",
    "pin_mem",
    "output_dir",
)


def table_cells(text: str) -> list[str]:
    return [cell.strip() for line in text.splitlines() if line.startswith("|") for cell in line.strip("|").split("|")]


def check_card(path: Path, folder: Path) -> str:
    """What every card must satisfy; returns its text."""
    card = ModelCard.load(path)  # the model-index too: metadata that does not parse fails here
    text = card.text
    assert max(len(cell) for cell in table_cells(text)) <= 200
    for flag in RUN_ONLY_FLAGS:
        assert flag not in text, flag
    # The preprocessing section states the saved processor's numbers.
    processor = AutoImageProcessor.from_pretrained(folder)
    size, crop = processor.size, processor.crop_size
    interpolation = Image.Resampling(processor.resample).name.lower()
    if size.get("shortest_edge"):
        assert f"| resize | shorter side to {size['shortest_edge']} px, aspect ratio kept; {interpolation} " in text
        assert f"| centre crop | {crop['width']} × {crop['height']} px |" in text
    else:
        assert f"| resize | {size['width']} × {size['height']} px (width × height), aspect ratio not kept; " in text
        # A squash then crops only where it squashed to more than the crop (DeiT's 256 then 224).
        if processor.do_center_crop:
            assert f"| centre crop | {crop['width']} × {crop['height']} px |" in text
        else:
            assert "centre crop" not in text
    mean, std = (", ".join(f"{value:g}" for value in values) for values in (processor.image_mean, processor.image_std))
    assert f"| normalize | mean ({mean}), std ({std}) |" in text
    return text
