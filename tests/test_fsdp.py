"""FSDP version 2 (`torch.distributed.fsdp.fully_shard`) on 2 CPU processes with gloo, wrapped as
accelerate_configs/fsdp.yaml wraps: each block and each unique MLP one unit (a grouped model's shared MLP once).

Accelerate itself never shards without a GPU (with that config `Accelerator(cpu=True)` wraps the model in
DistributedDataParallel), so the model is sharded here as Accelerate's FSDP2 path would shard it, under torchrun.
"""

import json
import subprocess
import sys
import textwrap

import pytest
from script_runs import HANG_S, ROOT, environment

from hf_vit_reduction import REDUCTION_STRATEGIES

WORKER = """
    import json, sys
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from accelerate.commands.config.config_args import load_config_from_file
    from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    wrap = load_config_from_file(sys.argv[2]).fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")

    def build(strategy):
        torch.manual_seed(0)
        config = ViTReducedConfig.from_preset(
            "digits", reduction_strategy=strategy, num_labels=10, drop_path_rate=0.0
        )
        return ViTReducedForImageClassification(config).train()

    def shard(model):
        # As Accelerate's FSDP2 transformer-based wrap: the named classes from the inside out, then the root;
        # modules() lists a shared MLP once, so it becomes one unit.
        units = [m for m in model.modules() if type(m).__name__ in wrap]
        for module in sorted(units, key=lambda m: type(m).__name__ != "ViTReducedMLP"):
            fully_shard(module)
        fully_shard(model)
        return model, len(units)

    def full(tensor):
        return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor

    torch.manual_seed(1)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    mine = slice(rank * 4, rank * 4 + 4)
    report = {}
    for strategy in sys.argv[3].split(","):
        reference = build(strategy)
        torch.nn.functional.cross_entropy(reference(pixel_values=images).logits, labels).backward()
        sharded, units = shard(build(strategy))
        loss = torch.nn.functional.cross_entropy(sharded(pixel_values=images[mine]).logits, labels[mine])
        loss.backward()  # FSDP averages the two halves' gradients: the whole batch's mean loss
        expected = dict(reference.named_parameters())
        names = [name for name, _ in sharded.named_parameters()]
        gradients = max(
            (full(p.grad) - expected[n].grad).abs().max().item() for n, p in sharded.named_parameters()
        )
        sharded_shapes = {n: tuple(p.to_local().shape) for n, p in sharded.named_parameters()}
        for model in (reference, sharded):
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
            optimizer.step()
        weights = max((full(p) - expected[n]).abs().max().item() for n, p in sharded.named_parameters())
        moved = max((full(p) - p0).abs().max().item() for (n, p), p0 in zip(
            sharded.named_parameters(), [build(strategy).get_parameter(n) for n in names]))
        folder = f"{sys.argv[1]}/{strategy}"
        dcp.save(get_model_state_dict(sharded), checkpoint_id=folder)
        restored, _ = shard(build(strategy))
        state = get_model_state_dict(restored)
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(restored, state)
        same = all(
            torch.equal(full(a), full(b)) for a, b in zip(sharded.parameters(), restored.parameters())
        )
        report[strategy] = {
            "units": units,
            "parameters": len(names),
            "max_gradient_difference": gradients,
            "max_weight_difference_after_adamw": weights,
            "max_weight_change_by_adamw": moved,
            "restored_equal": same,
            "sharded_dim0": {n: [sharded_shapes[n][0], tuple(expected[n].shape)[0]] for n in names},
        }
    if rank == 0:
        print(json.dumps(report))
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_the_unsharded_model_and_restores_a_sharded_checkpoint(tmp_path):
    worker = tmp_path / "fsdp_worker.py"
    worker.write_text(textwrap.dedent(WORKER))
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *(str(worker), str(tmp_path / "checkpoints"), str(ROOT / "accelerate_configs" / "fsdp.yaml")),
        ",".join(REDUCTION_STRATEGIES),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=HANG_S, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    depth = 4  # the digits preset's blocks
    for strategy in REDUCTION_STRATEGIES:
        measured = report[strategy]
        # Each block and each unique MLP: a grouped model (groups of 2) has half as many MLPs as blocks.
        unique_mlps = {"grouped": depth // 2}.get(strategy, depth)
        assert measured["units"] == depth + unique_mlps, strategy
        assert measured["max_gradient_difference"] < 1e-6, strategy
        # Adam's first step divides each gradient by its own size, so a gradient near eps (1e-8) turns a float32
        # difference of the order above into up to a few 1e-6 of a step of ~1e-3 (lr 1e-3 plus decay).
        assert measured["max_weight_difference_after_adamw"] < 1e-5, strategy
        assert measured["max_weight_change_by_adamw"] > 1e-4, strategy  # the update did move the weights
        assert measured["restored_equal"], strategy
        # Really sharded: every parameter holds half of its rows (dim 0, rounded up) on the first process.
        for name, (local, whole) in measured["sharded_dim0"].items():
            assert local == (whole + 1) // 2, (strategy, name)
