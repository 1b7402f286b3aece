"""`python -m hf_vit_reduction.benchmark`: the command lives in `hf_vit_reduction.study.benchmark`."""

from .command_line import run_command

if __name__ == "__main__":
    run_command("study.benchmark", extra="study")
