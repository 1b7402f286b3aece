"""What `torch.compile` compiles, and how: one definition for `train --torch_compile` and `benchmark --compile`.

A model is compiled in place (`nn.Module.compile`): its `__call__` runs the compiled graph, while the module, its
parameters and its `state_dict` stay what they were. So a checkpoint, `save_pretrained` and the EMA's walk over
`state_dict()` see the same key names as without compile (no `_orig_mod.` prefix), a grouped model's shared MLP
stays one parameter, and Accelerate's DistributedDataParallel or FSDP2 wrapper (compiled itself when it is the
module given) keeps its hooks. Graphs are built on the first call in each mode: the first training update, and the
first evaluation (train and eval mode are separate graphs).

Shapes are static (`dynamic=False`): a new batch size (the last partial evaluation batch) gets a graph of its own
instead of turning the batch dimension symbolic, and models that share their forward code but not their widths (our
four strategies, in one benchmark process) each get kernels for their own shapes.
"""

import torch

# torch.compile's modes (Transformers' `torch_compile_mode` takes the same strings).
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Graphs one run may need per compiled code object: train and eval mode, the EMA's copy, the last partial evaluation
# batch (one dynamic-shape graph), DDP's no_sync window under gradient accumulation; the benchmark's models too.
RECOMPILE_LIMIT = 32


def compile_model(model: torch.nn.Module, *, mode: str | None = None) -> torch.nn.Module:
    """`model` compiled in place with inductor (`mode`: one of `MODES`, None for torch's default); returns it."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"torch.compile mode {mode!r} is not valid; allowed: {', '.join(MODES)}")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    model.compile(mode=None if mode == "default" else mode, dynamic=False)
    return model
