"""--torch_compile: trains, resumes bit for bit after SIGKILL, saves the uncompiled key names, in 1 and 2 processes;
the compiled model under the FSDP2 wrapping computes the eager model's gradients.

Inductor builds C++ kernels on a CPU: about a minute per graph on a cold cache, seconds once torch's cache holds
them, so these are all in the slow tier.
"""

import json
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file
from script_runs import HANG_S, ROOT, environment, run_command
from test_checkpointing import assert_same_run, command, kill_after_checkpoint

from hf_vit_reduction.training.checkpointing import CHECKPOINTS, EMA_WEIGHTS

CHECKPOINT_FILES = ("model.safetensors", EMA_WEIGHTS)  # Accelerate's save_state of the model; our EMA


def train(out, processes, *extra):
    result = run_command(command(out, "grouped", processes, 0, *extra), timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("processes, kill_step", [(1, 6), (2, 9)])
def test_compiled_training_resumes_exactly_and_saves_the_uncompiled_names(tmp_path, processes, kill_step):
    eager = tmp_path / "eager"
    train(eager, processes, "--max_train_steps", "3")
    reference = tmp_path / "reference"
    result = train(reference, processes, "--torch_compile")
    assert result.stderr.count("compiled in ") == 1  # once, on the main process
    # The saved model, and a checkpoint's model and EMA: an eager run's names (a shared MLP stored once).
    for saved, expected in [
        ("model.safetensors", "model.safetensors"),
        *[(f"{CHECKPOINTS}/step_00000014/{name}", f"{CHECKPOINTS}/step_00000003/{name}") for name in CHECKPOINT_FILES],
    ]:
        names = load_file(reference / saved).keys()
        assert names == load_file(eager / expected).keys() and not [k for k in names if "_orig_mod" in k], saved
    results = json.loads((reference / "results.json").read_text())
    assert len(set(results["replica_checksums"])) == 1 and results["num_processes"] == processes

    resumed = tmp_path / "resumed"
    kill_after_checkpoint(command(resumed, "grouped", processes, 0, "--torch_compile"), resumed, kill_step)
    result = train(resumed, processes, "--torch_compile", "--resume_from_checkpoint", "latest")
    assert "resumed from" in result.stderr
    assert_same_run(reference, resumed)


FSDP_WORKER = """
    import json, sys
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from accelerate.commands.config.config_args import load_config_from_file
    from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification
    from hf_vit_reduction.training.compile import compile_model

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    wrap = load_config_from_file(sys.argv[1]).fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")

    def build(strategy):
        torch.manual_seed(0)
        config = ViTReducedConfig.from_preset(
            "digits", reduction_strategy=strategy, num_labels=10, image_size=8, drop_path_rate=0.0
        )
        return ViTReducedForImageClassification(config).train()

    def shard(model):  # as tests/test_fsdp.py: the named classes from the inside out, then the root
        units = [m for m in model.modules() if type(m).__name__ in wrap]
        for module in sorted(units, key=lambda m: type(m).__name__ != "ViTReducedMLP"):
            fully_shard(module)
        fully_shard(model)
        return model

    def full(tensor):
        return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor

    torch.manual_seed(1)
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    mine = slice(rank * 4, rank * 4 + 4)
    report = {}
    for strategy in sys.argv[2].split(","):
        reference = build(strategy)
        torch.nn.functional.cross_entropy(reference(pixel_values=images).logits, labels).backward()
        sharded = shard(build(strategy))
        names = list(sharded.state_dict())
        compiled = compile_model(sharded)
        loss = torch.nn.functional.cross_entropy(compiled(pixel_values=images[mine]).logits, labels[mine])
        loss.backward()
        expected = dict(reference.named_parameters())
        report[strategy] = {
            "same_object": compiled is sharded,
            "same_names": list(compiled.state_dict()) == names,
            "parameters": [len(list(compiled.parameters())), len(list(reference.parameters()))],
            "max_gradient_difference": max(
                (full(p.grad) - expected[n].grad).abs().max().item() for n, p in compiled.named_parameters()
            ),
        }
    if rank == 0:
        print(json.dumps(report))
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_the_compiled_model_under_fsdp2_computes_the_eager_gradients(tmp_path):
    worker = tmp_path / "fsdp_compile_worker.py"
    worker.write_text(textwrap.dedent(FSDP_WORKER))
    strategies = ("baseline", "grouped")  # one MLP per block; one shared by two blocks
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *(str(worker), str(ROOT / "accelerate_configs" / "fsdp.yaml"), ",".join(strategies)),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=HANG_S, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for strategy in strategies:
        measured = report[strategy]
        assert measured["same_object"] and measured["same_names"], strategy
        assert measured["parameters"][0] == measured["parameters"][1], strategy  # a shared MLP stays one parameter
        # Inductor fuses and reorders float32 sums: equal to float rounding, not bit for bit.
        assert measured["max_gradient_difference"] < 1e-5, strategy
