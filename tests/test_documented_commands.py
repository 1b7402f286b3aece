"""Every command the documentation shows (README, model_cards/, accelerate_configs/, the card template) is in the
current form, `hf-vit-reduction <command>` or the training script, and every flag it passes is one that command
takes (its --help lists it). The README's own blocks also run, in test_readme.py."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from hf_vit_reduction import cli

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "accelerate_configs" / "README.md", ROOT / "tests" / "README.md"]
    + list((ROOT / "model_cards").rglob("*.md"))
    + list((ROOT / "hf_vit_reduction" / "hub" / "templates").glob("*.md"))
)
SCRIPT = "run_image_classification.py"


def documented_commands(text: str) -> list[list[str]]:
    """Command lines of code blocks (continuations joined) and of inline code, split as a shell would."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line for line in joined.splitlines() if "hf-vit-reduction " in line or SCRIPT in line]
    found = []
    for line in lines:
        for code in re.findall(r"`([^`]+)`", line) or [line]:
            words = shlex.split(code.split(" #")[0].replace("...", ""), comments=False)
            if "hf-vit-reduction" in words or SCRIPT in words:
                found.append(words)
    return found


def command_and_flags(words: list[str]) -> tuple[str, list[str]] | None:
    """(the command, its flags) of one line, None for what is not a call (`hf-vit-reduction <command>`)."""
    if SCRIPT in words:
        name, rest = "train", words[words.index(SCRIPT) + 1 :]
    else:
        rest = words[words.index("hf-vit-reduction") + 1 :]
        if not rest or rest[0].startswith("<"):
            return None
        name, rest = rest[0], rest[1:]
    if "--" in rest:  # reproduce: what follows `--` is training's
        rest = rest[: rest.index("--")]
    return name, [word.split("=")[0] for word in rest if word.startswith("--")]


def help_text(name: str) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0, name
    return output.getvalue()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_documented_commands_are_current_and_their_flags_exist(document):
    text = document.read_text(encoding="utf-8")
    assert not re.search(r"python -m hf_vit_reduction\.\w", text), "an old command form (python -m ...<command>)"
    helps = {}
    for words in documented_commands(text):
        parsed = command_and_flags(words)
        if parsed is None:
            continue
        name, flags = parsed
        assert name in cli.COMMANDS, (name, words)
        helps.setdefault(name, help_text(name))
        for flag in flags:
            assert re.search(rf"{re.escape(flag)}\b", helps[name]), (document.name, name, flag)
