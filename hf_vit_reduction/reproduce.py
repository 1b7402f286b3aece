"""`python -m hf_vit_reduction.reproduce`: the command lives in `hf_vit_reduction.study.reproduce`."""

from .command_line import run_command

if __name__ == "__main__":
    run_command("study.reproduce", extra="study")
