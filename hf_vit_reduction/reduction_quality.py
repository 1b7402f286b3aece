"""`python -m hf_vit_reduction.reduction_quality`: the command lives in `hf_vit_reduction.study.reduction_quality`."""

from .command_line import run_command

if __name__ == "__main__":
    run_command("study.reduction_quality", extra="study")
