"""What every command of the project shares: a parser whose bad flags end in one line, `error: ...` (with
argparse's exit status for usage errors, 2, and no usage block), and the check that the extra a command needs is
installed, so that a core-only install says what to add instead of failing on an import deep inside."""

import argparse
import importlib
import importlib.util

# The modules each extra of setup.py brings, by import name.
EXTRAS = {
    "train": ("torchvision", "timm", "datasets", "accelerate", "evaluate", "sklearn", "scipy", "matplotlib", "tqdm"),
    "study": ("torchvision", "timm", "datasets", "accelerate", "evaluate", "sklearn", "scipy", "matplotlib", "tqdm"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
}


class CommandParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")


def require_extra(extra: str, *, command: str) -> None:
    """Exit with one line naming the extra to install when any of its modules is missing."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"error: {command} needs the '{extra}' extra, which is not installed (missing: {', '.join(missing)}); "
            f"install it with: pip install 'hf-vit-reduction[{extra}]'"
        )


def run_command(module: str, *, extra: str | None) -> None:
    """`python -m hf_vit_reduction.<command>`: check the extra, then run the command module's `main`."""
    if extra is not None:
        require_extra(extra, command=f"python -m hf_vit_reduction.{module.rsplit('.', 1)[-1]}")
    importlib.import_module(f"hf_vit_reduction.{module}").main()
