"""`python -m hf_vit_reduction.data_benchmark`: the command lives in `hf_vit_reduction.study.data_benchmark`."""

from .command_line import run_command

if __name__ == "__main__":
    run_command("study.data_benchmark", extra="study")
