"""Running run_image_classification.py in real processes, one or two (accelerate launch, gloo), as a user would."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "run_image_classification.py")
ONE_PROCESS = (sys.executable,)
TWO_PROCESSES = (
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--config_file",
    str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"),
    "--main_process_port",
    "0",
)


def environment(**extra) -> dict:
    """Offline, one thread per process (two processes share 2 cores), this checkout importable."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def script_command(args, launcher=ONE_PROCESS) -> list[str]:
    return [*launcher, SCRIPT, *args]


def run_command(command, timeout=300, **env):
    return subprocess.run(
        command, cwd=ROOT, env=environment(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


def run_script(args, launcher=ONE_PROCESS, timeout=300, **env):
    return run_command(script_command(args, launcher), timeout, **env)


def import_script():
    """run_image_classification.py as a module, for tests that drive `main(argv)` in this process."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("run_image_classification")


def patched_script_command(patch: str, args) -> list[str]:
    """One process running `patch` (Python that replaces something from outside the script), then main(args)."""
    driver = f"{patch}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\nimport run_image_classification\n"
    return [sys.executable, "-c", driver + "run_image_classification.main(sys.argv[1:])", *args]
