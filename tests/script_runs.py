"""Running run_image_classification.py in real processes, one or two (accelerate launch, gloo), as a user would."""

import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "run_image_classification.py")
PAUSE_HOOK = ROOT / "tests" / "checkpoint_pause"
# Only against a hang: a run is waited for by the state it reaches, never by how long it took.
HANG_S = 1800
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


def run_command(command, timeout=HANG_S, **env):
    return subprocess.run(
        command, cwd=ROOT, env=environment(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


def run_script(args, launcher=ONE_PROCESS, timeout=HANG_S, **env):
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


class PausedRun:
    """A run whose processes pause right after checkpoint `step` is complete (tests/checkpoint_pause), so that a test
    kills or signals them at that point, not somewhere inside a time window that depends on the machine's load.

    `env` replaces the variables of `environment()` it names (e.g. a rank's own, for ranks started one by one).
    """

    def __init__(self, command, folder: Path, step: int, **env):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(prefix="stderr-", suffix=".txt", dir=folder)  # one per process started
        self.stderr_file = Path(name)
        with os.fdopen(descriptor, "w") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment(
                    PYTHONPATH=f"{PAUSE_HOOK}{os.pathsep}{ROOT}",
                    PAUSE_AFTER_CHECKPOINT=str(step),
                    PAUSE_DIR=str(folder),
                    **env,
                ),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )

    def wait_until_paused(self, ranks=(0,)) -> None:
        """Until each of `ranks` has paused; an error with the run's output if it ended first."""
        deadline = time.monotonic() + HANG_S
        while not all((self.folder / f"paused-{rank}").exists() for rank in ranks):
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended before it paused: {self.stderr()[-3000:]}")
            assert time.monotonic() < deadline, f"hung before it paused: {self.stderr()[-3000:]}"
            time.sleep(0.05)

    def go_on(self) -> None:
        (self.folder / "go-on").touch()

    def kill(self) -> None:
        """SIGKILL to the whole launch: the launcher and every process it started (torchrun's workers leave the
        launcher's process group, so the group alone would leave them paused forever)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            launch = psutil.Process(self.process.pid)
            processes = [launch, *launch.children(recursive=True)]
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            psutil.wait_procs(processes)
        self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exception) -> None:
        """Whatever the test found: nothing of the run is left behind, paused or not."""
        if self.process.poll() is None:
            self.kill()

    def wait(self) -> tuple[int, str]:
        """The exit status and what the run wrote to stderr."""
        return self.process.wait(timeout=HANG_S), self.stderr()

    def stderr(self) -> str:
        return self.stderr_file.read_text()
