import importlib.util
import logging
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from hf_vit_reduction.training import engine
from hf_vit_reduction.training.multi_node import check_launched_backend

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"

EXPECTED = {
    "single_gpu.yaml": ("NO", 1, 1),
    "ddp_2gpu.yaml": ("MULTI_GPU", 2, 1),
    "multi_node_2x8.yaml": ("MULTI_GPU", 16, 2),
    "fsdp.yaml": ("FSDP", 2, 1),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2, 1),
    "cpu_2proc.yaml": ("MULTI_GPU", 2, 1),
}


def test_every_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses(name):
    config = load_config_from_file(str(CONFIGS / name))
    distributed_type, processes, machines = EXPECTED[name]
    assert config.distributed_type == distributed_type  # a str enum
    assert (config.num_processes, config.num_machines) == (processes, machines)
    assert config.mixed_precision in ("bf16", "fp16", "no")


def test_scale_out_specifics():
    multi_node = load_config_from_file(str(CONFIGS / "multi_node_2x8.yaml"))
    assert multi_node.main_process_ip and multi_node.main_process_port == 29500
    assert "# EDIT" in (CONFIGS / "multi_node_2x8.yaml").read_text()
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "ViTReducedLayer,ViTReducedMLP"
    assert load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml")).deepspeed_config["zero_stage"] == 2
    assert load_config_from_file(str(CONFIGS / "cpu_2proc.yaml")).use_cpu is False  # True would start 1 process


def test_deepspeed_follows_the_scripts_accumulation_and_does_not_clip(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    deepspeed = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml")).deepspeed_config
    assert "gradient_accumulation_steps" not in deepspeed
    # What `accelerate launch` hands the script's process for this config (accelerate.utils.launch).
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", str(deepspeed["gradient_clipping"]).lower())
    config = DeepSpeedPlugin(zero_stage=deepspeed["zero_stage"]).deepspeed_config
    assert config["gradient_accumulation_steps"] == "auto"  # filled from Accelerator(gradient_accumulation_steps=...)
    assert "gradient_clipping" not in config  # DeepSpeed's default: no clipping


# Variables `accelerate launch` sets from a config's distributed_type, which Accelerate's state reads.
FSDP_LAUNCH, DEEPSPEED_LAUNCH = {"ACCELERATE_USE_FSDP": "true"}, {"ACCELERATE_USE_DEEPSPEED": "true"}
TINY_RUN = ("--image_size", "8", "--max_train_samples", "16", "--max_eval_samples", "8", "--batch_size", "8")
TINY_RUN += ("--max_train_steps", "1", "--workers", "0", "--report_to", "none")


def test_fsdp_or_deepspeed_without_a_gpu_is_said_to_run_as_ddp(monkeypatch):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    # Accelerate itself ignores the FSDP launch on a CPU: the premise of the warning.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert Accelerator(cpu=True).distributed_type != DistributedType.FSDP
    warning = check_launched_backend(FSDP_LAUNCH, cpu=True)
    assert warning.startswith("the launch configuration asks for FSDP, which Accelerate does not run without a GPU")
    assert check_launched_backend(FSDP_LAUNCH, cpu=False) is None
    assert check_launched_backend({"ACCELERATE_USE_FSDP": "false"}, cpu=True) is None
    assert check_launched_backend({}, cpu=True) is None


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_a_run_launched_for_fsdp_on_a_cpu_says_so_and_trains(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    caplog.set_level(logging.WARNING)
    engine.main([*TINY_RUN, "--output_dir", str(tmp_path / "out")])
    assert any("asks for FSDP, which Accelerate does not run without a GPU" in r.message for r in caplog.records)
    assert (tmp_path / "out" / "results.json").is_file()


def test_deepspeed_asked_but_not_installed_is_one_line_before_anything_is_written(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(SystemExit) as stop:
        engine.main([*TINY_RUN, "--output_dir", str(tmp_path / "out")])
    assert str(stop.value.code).startswith(
        "error: the launch configuration asks for DeepSpeed (distributed_type: DEEPSPEED), which is not installed; "
        "allowed: pip install deepspeed"
    )
    assert not (tmp_path / "out").exists()
