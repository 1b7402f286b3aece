"""This checkout built as a wheel and installed into a fresh virtual environment, as `pip install` from an index
would: no repository beside it, no editable finder."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install_wheel(tmp_path: Path) -> Path:
    """The new environment's `bin` folder (its python and the `hf-vit-reduction` console script)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "README.md", "pyproject.toml"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "hf_vit_reduction", source / "hf_vit_reduction", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."]
    subprocess.run(build, cwd=source, check=True, capture_output=True)
    (wheel,) = wheels.glob("hf_vit_reduction-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    # torch, transformers, ... from this environment, as plain path entries: the editable install's finder, a
    # .pth of its own, is not activated by them, so the package can only come from the wheel.
    (site / "shared_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    shutil.rmtree(source)
    return venv / "bin"
