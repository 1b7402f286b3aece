"""`python -m hf_vit_reduction.model_card`: the command lives in `hf_vit_reduction.hub.model_card`."""

from .command_line import run_command

if __name__ == "__main__":
    run_command("hub.model_card", extra=None)
