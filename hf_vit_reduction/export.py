"""`python -m hf_vit_reduction.export`: the command lives in `hf_vit_reduction.conversion.export`."""

from .command_line import run_command

if __name__ == "__main__":
    run_command("conversion.export", extra="onnx")
