from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

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
