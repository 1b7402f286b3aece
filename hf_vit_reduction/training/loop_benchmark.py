"""The training loop's speed against the bare step's (`hf-vit-reduction train --benchmark_loop`).

The engine's own loop (mixup, EMA, the non-finite check, progress bar, logging) runs on pre-decoded in-memory data;
the bare step is forward, backward and AdamW on one fixed batch with nothing around it, timed just before and just
after the loop so that the machine's drift cancels. The loop is timed by a callback, from the end of the
`--benchmark_warmup`-th update to the end of the last, the device synchronized at both marks (the loop itself waits
for the device only every --log_interval updates). With --torch_compile both are compiled, and the graphs are built
in the warm-up.
"""

import logging
import time

import torch

from . import loaders
from .config import train_loader_kwargs
from .outputs import write_json

logger = logging.getLogger(__name__)


def in_memory(dataset) -> list[dict]:
    """Every example transformed once and held as tensors, so that the loop itself is what gets timed."""
    return [dataset[i] for i in range(len(dataset))]


class LoopBenchmark:
    """Swaps the run's training data for in-memory tensors, times the loop and the bare step, writes the report."""

    def __init__(self, run):
        self.run = run
        self.marks = []  # (time, update) at the end of the warm-up and at the last update

    def on_update(self, state) -> None:
        if state.step in (self.run.config.benchmark_warmup, self.run.plan.total_updates):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), state.step))

    def measure(self) -> dict:
        """Run the engine's `train` between two timings of the bare step; write loop_benchmark.json."""
        from .engine import train  # the engine runs this benchmark with --benchmark_loop

        run, config, accelerator = self.run, self.run.config, self.run.accelerator
        decoded = in_memory(
            loaders.prepare_dataset(run.data.train, loaders.ExampleTransform(run.eval_transform, **run.columns))
        )
        world, rank = accelerator.num_processes, accelerator.process_index
        run.train_sampler = loaders.train_sampler(
            decoded, num_processes=world, process_index=rank, aug_repeats=config.aug_repeats, seed=config.seed
        )
        run.train_loader = loaders.build_train_loader(
            decoded,
            **train_loader_kwargs(config),
            sampler=run.train_sampler,
            num_processes=world,
            process_index=rank,
        )
        bare_before = self.bare_step_speed()
        train(run, callbacks=[self])
        bare_after = self.bare_step_speed()
        (start, first), (end, last) = self.marks
        # In-memory examples are all readable and the batch is even: every update trains on a full global batch.
        images = (last - first) * config.batch_size * config.grad_accum_steps * world
        report = self.report(images / (end - start), bare_before, bare_after)
        if accelerator.is_main_process:
            write_json(f"{config.output_dir}/loop_benchmark.json", report)
        logger.info("loop benchmark: %s", report)
        return report

    def bare_step_speed(self) -> float:
        """Images/s of forward, backward and AdamW on one fixed batch, with nothing around them."""
        run, config, accelerator = self.run, self.run.config, self.run.accelerator
        batch = next(iter(run.train_loader))
        images = run.normalize(batch["pixel_values"].to(accelerator.device))
        images, targets = run.augment(images, batch["labels"].to(accelerator.device))
        run.model.train()

        def step():
            with accelerator.autocast():
                loss = run.criterion(run.model(pixel_values=images).logits, targets)
            accelerator.backward(loss)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)

        for _ in range(config.benchmark_warmup):
            step()
        steps = (config.max_train_steps - config.benchmark_warmup) * config.grad_accum_steps
        accelerator.wait_for_everyone()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return len(targets) * steps * accelerator.num_processes / (time.perf_counter() - start)

    def report(self, loop_images_per_s: float, bare_before: float, bare_after: float) -> dict:
        config = self.run.config
        bare = (bare_before + bare_after) / 2
        return {
            "batch_size": config.batch_size,
            "timed_updates": config.max_train_steps - config.benchmark_warmup,
            "loop_images_per_s": loop_images_per_s,
            "bare_step_images_per_s": bare,
            "bare_step_images_per_s_before_and_after": [bare_before, bare_after],
            "loop_vs_bare": loop_images_per_s / bare,
            "device": str(self.run.accelerator.device),
            "torch_compile": config.torch_compile,
            "log_interval": config.log_interval,
        }
