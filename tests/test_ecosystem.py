"""The README's "Using it with the ecosystem" examples, run: 🤗 Trainer, PEFT LoRA and AutoPeftModel."""

import os
import subprocess
import textwrap

import pytest
import torch
from peft import AutoPeftModel, LoraConfig, PeftModel, get_peft_model
from transformers import Trainer, TrainingArguments

from hf_vit_reduction import ViTReducedForImageClassification

PIXELS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_trainer_fine_tunes_a_grouped_model_and_keeps_its_sharing(make_model, tmp_path):
    model = make_model("grouped")
    start = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    dataset = [
        {"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": index % 10} for index in range(16)
    ]
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )
    result = Trainer(model=model, args=arguments, train_dataset=dataset).train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert model.vit.layers[1].mlp is model.vit.layers[0].mlp
    moved = [name for name, parameter in model.named_parameters() if not torch.equal(parameter, start[name])]
    assert "vit.layers.0.mlp.fc1.weight" in moved and "classifier.weight" in moved


def lora(**kwargs):
    return LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "proj", "fc1", "fc2"], **kwargs)


def test_lora_on_a_shared_mlp_is_one_adapter_for_its_group(make_model, tmp_path):
    base = make_model("grouped")
    peft_model = get_peft_model(base, lora(modules_to_save=["classifier"]))
    lora_modules = [name for name, module in peft_model.named_modules() if name.endswith(".lora_A")]
    mlp_adapters = sorted(name.split("base_model.model.")[1] for name in lora_modules if ".mlp." in name)
    # The shared MLP is adapted once, under its group's first block; its other block computes with the same adapter.
    assert mlp_adapters == [f"vit.layers.{i}.mlp.{fc}.lora_A" for i in (0, 2) for fc in ("fc1", "fc2")]
    layers = peft_model.base_model.model.vit.layers
    assert layers[1].mlp.fc1 is layers[0].mlp.fc1
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
        adapted = peft_model(PIXELS).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(make_model("grouped"), tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(reloaded(PIXELS).logits, adapted, atol=1e-5)
        assert torch.allclose(merged(PIXELS).logits, adapted, atol=1e-5)
    assert merged.vit.layers[1].mlp is merged.vit.layers[0].mlp


def test_lora_layers_to_transform_selects_blocks(make_model):
    peft_model = get_peft_model(make_model("grouped"), lora(layers_to_transform=[0, 1], layers_pattern="layers"))
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in peft_model.named_modules() if "lora_A" in name}
    assert adapted == {"0", "1"}


def test_auto_peft_model_loads_an_adapter_once_the_package_is_in_peft_s_import_allowlist(make_model, tmp_path):
    """PEFT imports the base model's library only from its allowlist (transformers, diffusers, ...): a ViTReduced
    adapter is refused until the call names this package, as the README shows."""
    make_model("grouped").save_pretrained(tmp_path / "base")
    base = ViTReducedForImageClassification.from_pretrained(tmp_path / "base")
    adapted = get_peft_model(base, lora(modules_to_save=["classifier"]))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # LoRA's B starts at zero: make the adapter change the logits
        expected = adapted(PIXELS).logits
    adapted.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"wants to import 'hf_vit_reduction\.modeling_vit_reduced' which is not in"):
        AutoPeftModel.from_pretrained(tmp_path / "adapter")
    loaded = AutoPeftModel.from_pretrained(tmp_path / "adapter", import_allowlist=["hf_vit_reduction"]).eval()
    assert type(loaded.base_model.model) is ViTReducedForImageClassification
    with torch.no_grad():
        got = loaded(PIXELS).logits
    assert not torch.allclose(got, make_model("grouped")(PIXELS).logits)
    torch.testing.assert_close(got, expected)


REMOTE_CODE_ADAPTER = """
    import importlib.util, sys
    import torch
    from peft import AutoPeftModel, LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification

    assert importlib.util.find_spec("hf_vit_reduction") is None
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    if sys.argv[1] == "adapt":
        base = AutoModelForImageClassification.from_pretrained("base", trust_remote_code=True)
        adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["qkv", "fc1"], modules_to_save=["classifier"]))
        with torch.no_grad():
            for name, parameter in adapted.named_parameters():
                if "lora_B" in name:
                    parameter.normal_()
        torch.save(adapted.eval()(pixels).logits, "expected.pt")
        adapted.save_pretrained("adapter")
    else:  # a new process: the base's code is imported from Transformers' module cache
        try:
            AutoPeftModel.from_pretrained("adapter", trust_remote_code=True)
        except ValueError as error:
            print("refused:", str(error).split(" which ")[0])
        AutoModelForImageClassification.from_pretrained("base", trust_remote_code=True)
        loaded = AutoPeftModel.from_pretrained(
            "adapter", import_allowlist=["transformers_modules"], trust_remote_code=True
        ).eval()
        with torch.no_grad():
            print("equal:", torch.equal(loaded(pixels).logits, torch.load("expected.pt")))
"""


@pytest.mark.slow  # two processes without this package
def test_auto_peft_model_loads_an_adapter_on_a_remote_code_base_with_the_readme_s_allowlist(
    make_model, tmp_path, python_without_package
):
    make_model("grouped").save_pretrained(tmp_path / "base")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HOME": str(tmp_path / "hf")}
    outputs = []
    for step in ("adapt", "load"):
        done = subprocess.run(
            [str(python_without_package), "-c", textwrap.dedent(REMOTE_CODE_ADAPTER), step],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    refusal, loaded = outputs[1].splitlines()
    assert refusal.startswith(
        "refused: The auto mapping wants to import 'transformers_modules.base."
    ) and refusal.endswith(".modeling_vit_reduced'")
    assert loaded == "equal: True"
