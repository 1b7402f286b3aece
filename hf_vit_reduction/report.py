"""`python -m hf_vit_reduction.report`: the command lives in `hf_vit_reduction.study.report`."""

from .command_line import run_command

if __name__ == "__main__":
    run_command("study.report", extra="study")
