"""`hf-vit-reduction <command>` (= `python -m hf_vit_reduction <command>`): one registry of commands.

Each command is a module with `main(argv)`, imported only when it runs, so a core install lists every command and
a command whose extra is missing ends in one line naming it, before any import of that extra.
"""

import argparse
import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass

PROG = "hf-vit-reduction"

# The modules each extra of setup.py brings, by import name.
EXTRAS = {
    "train": ("torchvision", "timm", "datasets", "accelerate", "evaluate", "sklearn", "scipy", "matplotlib", "tqdm"),
    "study": ("torchvision", "timm", "datasets", "accelerate", "evaluate", "sklearn", "scipy", "matplotlib", "tqdm"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
}


@dataclass(frozen=True)
class Command:
    module: str  # holds `main(argv)`
    extra: str | None  # the setup.py extra it needs beyond the core
    help: str


COMMANDS = {
    "train": Command(
        "hf_vit_reduction.training.engine", "train", "train a ViTReduced (= run_image_classification.py)"
    ),
    "convert": Command("hf_vit_reduction.conversion.convert", "train", "bring a ViT or DeiT in, and cut it"),
    "export": Command(
        "hf_vit_reduction.conversion.export", None, "export a model folder to ONNX, Transformers or timm"
    ),
    "push": Command("hf_vit_reduction.hub.pushing", None, "push a model folder to the Hub"),
    "card": Command(
        "hf_vit_reduction.hub.model_card", None, "write the model card (README.md) of a model folder or a Hub id"
    ),
    "summary": Command("hf_vit_reduction.summary", None, "parameters, unique MLPs and GMACs (the paper's Table 2)"),
    "evaluate": Command("hf_vit_reduction.evaluation.evaluate", "train", "score models side by side on a dataset"),
    "predict": Command("hf_vit_reduction.evaluation.predict", "train", "top-k labels of a folder of images"),
    "report": Command("hf_vit_reduction.study.report", "study", "runs to the paper's tables and plots"),
    "reproduce": Command("hf_vit_reduction.study.reproduce", "study", "train several strategies and seeds"),
    "benchmark": Command("hf_vit_reduction.study.benchmark", "study", "training and inference throughput"),
    "data-benchmark": Command("hf_vit_reduction.study.data_benchmark", "study", "the input pipeline against timm's"),
    "reduction-quality": Command(
        "hf_vit_reduction.study.reduction_quality", "study", "post-hoc cuts scored before recovery"
    ),
}


class CommandParser(argparse.ArgumentParser):
    """A parser whose bad flags end in one line, `error: ...`, with argparse's usage status (2) and no usage block;
    a mistyped flag gets the command's nearest flag as a suggestion."""

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            flags = [option for action in self._actions for option in action.option_strings]
            typed = [word.split("=")[0] for word in message.split(": ", 1)[1].split() if word.startswith("--")]
            near = [match for word in typed for match in difflib.get_close_matches(word, flags, n=1, cutoff=0.75)]
            if near:
                message += f"; did you mean {' / '.join(dict.fromkeys(near))}?"
        self.exit(2, f"error: {message}\n")


def command_parser(command: str, **kwargs) -> CommandParser:
    """The parser of one command, named as the user typed it."""
    return CommandParser(prog=f"{PROG} {command}", **kwargs)


def require_extra(extra: str, *, command: str) -> None:
    """Exit with one line naming the extra to install when any of its modules is missing."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"error: {command} needs the '{extra}' extra, which is not installed (missing: {', '.join(missing)}); "
            f"install it with: pip install 'hf-vit-reduction[{extra}]'"
        )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"usage: {PROG} <command> [<args>]", "", "commands:"]
        lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
        lines += ["", f"`{PROG} <command> --help` lists a command's flags."]
        print("\n".join(lines))
        if not argv:
            sys.exit(2)
        return
    name, *rest = argv
    if name not in COMMANDS:
        raise SystemExit(f"error: {name!r} is not a command of {PROG}; allowed: {', '.join(COMMANDS)}")
    command = COMMANDS[name]
    if command.extra is not None:
        require_extra(command.extra, command=f"{PROG} {name}")
    # What a command's main returns (its report, its rows) is for callers in Python; the console script's exit
    # status is 0 unless the command exits otherwise.
    importlib.import_module(command.module).main(rest)
