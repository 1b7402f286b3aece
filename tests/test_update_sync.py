"""The training loop waits on the device once per --log_interval updates: collectives and host reads counted."""

import os
import sys

import pytest
import torch
from accelerate import Accelerator

from hf_vit_reduction.training import engine

# 96 digits of 8 px, batches of 8 accumulated over 2: 6 updates (12 batches) in one epoch; Mixup, CutMix and EMA on.
ARGS = (
    "--strategy",
    "grouped",
    "--image_size",
    "8",
    "--max_train_samples",
    "96",
    "--max_eval_samples",
    "8",
    "--batch_size",
    "8",
    "--grad_accum_steps",
    "2",
    "--max_train_steps",
    "6",
    "--workers",
    "0",
    "--report_to",
    "none",
    "--mixup",
    "0.8",
    "--cutmix",
    "1.0",
    "--model_ema",
    "--checkpointing_steps",
    "epoch",
)
# What copies a tensor's value to the host (on a GPU: waits for every kernel launched before it).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
# Callers whose tensors live on the host on any machine: the per-image transforms (in the loader's workers), the
# sampler's and loader's seeds, torch.optim's step counters (CPU tensors unless capturable or fused).
HOST_ONLY = (
    f"{os.sep}torchvision{os.sep}",
    f"{os.sep}torch{os.sep}utils{os.sep}data{os.sep}",
    f"{os.sep}torch{os.sep}optim{os.sep}",
)


def count_waits(monkeypatch, argv) -> list[tuple[str, int]]:
    """(what, update under way) for each collective and host read made inside the epoch loop."""
    events, current = [], {"run": None}

    def counted(name, original):
        def wrapper(self, *args, **kwargs):
            run, caller = current["run"], sys._getframe(1).f_code.co_filename
            if run is not None and not any(part in caller for part in HOST_ONLY):
                events.append((name, run.state.step))
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("reduce", "gather", "gather_for_metrics"):
        monkeypatch.setattr(Accelerator, name, counted(name, getattr(Accelerator, name)))
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    train_one_epoch = engine.train_one_epoch

    def watched(run, epoch, callbacks=()):
        current["run"] = run
        try:
            train_one_epoch(run, epoch, callbacks)
        finally:
            current["run"] = None

    monkeypatch.setattr(engine, "train_one_epoch", watched)
    engine.main(argv)
    monkeypatch.undo()
    return events


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_an_update_makes_one_all_reduce_and_the_host_reads_every_log_interval(tmp_path, monkeypatch):
    events = count_waits(monkeypatch, [*ARGS, "--log_interval", "4", "--output_dir", str(tmp_path / "run")])
    # One reduce per update (none per batch), no gather; the host reads at update 4 and at the epoch's end (6).
    assert events == [("reduce", step) for step in range(1, 5)] + [("tolist", 4)] + [
        ("reduce", 5),
        ("reduce", 6),
        ("tolist", 6),
    ]
