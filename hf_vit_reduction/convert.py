"""`python -m hf_vit_reduction.convert`: the command lives in `hf_vit_reduction.conversion.convert`."""

from .command_line import run_command

if __name__ == "__main__":
    run_command("conversion.convert", extra="train")
