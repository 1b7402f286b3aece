"""The command line (one registry of commands), the shared command parser, the extras check, and the core install (torch, transformers, huggingface_hub,
safetensors, pillow) that a Hub user gets from `pip install hf-vit-reduction`."""

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from PIL import Image
from script_runs import HANG_S
from transformers import pipeline
from wheel_install import install_wheel

from hf_vit_reduction import cli
from hf_vit_reduction.cli import COMMANDS, CommandParser, require_extra
from hf_vit_reduction.image_processing_vit_reduced import image_processor_for

ROOT = Path(__file__).resolve().parents[1]
CORE = ("torch", "transformers", "huggingface_hub", "safetensors", "pillow")


def test_a_bad_flag_is_one_line_with_the_usage_error_status(capsys):
    parser = CommandParser(prog="x")
    parser.add_argument("--size", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--size", "big"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: argument --size: invalid int value: 'big'\n"


def test_a_missing_extra_names_the_extra_and_the_missing_modules(monkeypatch):
    installed = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in ("timm", "scipy") else installed(name)
    )
    with pytest.raises(SystemExit) as exit_info:
        require_extra("study", command="hf-vit-reduction report")
    assert str(exit_info.value) == (
        "error: hf-vit-reduction report needs the 'study' extra, which is not installed "
        "(missing: timm, scipy); install it with: pip install 'hf-vit-reduction[study]'"
    )
    require_extra("onnx", command="export")  # every module of that extra is installed here: no exit


def test_every_extra_module_is_what_setup_py_installs():
    # EXTRAS lists import names; each must belong to a distribution that setup.py's extra requires.
    setup_text = (ROOT / "setup.py").read_text()
    installed = importlib.metadata.packages_distributions()
    for extra, modules in cli.EXTRAS.items():
        for module in modules:
            distributions = installed[module]
            assert any(f'"{name}' in setup_text for name in distributions), (extra, module, distributions)


def test_a_command_runs_its_module_s_main_with_the_rest_of_the_line(monkeypatch):
    called = []
    monkeypatch.setattr("hf_vit_reduction.study.report.main", lambda argv: called.append(argv))
    cli.main(["report", "runs", "--output_dir", "out"])
    assert called == [["runs", "--output_dir", "out"]]


def test_every_registered_command_has_a_main_and_a_known_extra():
    for name, command in COMMANDS.items():
        assert command.extra is None or command.extra in cli.EXTRAS, name
        module = importlib.import_module(command.module)
        assert callable(module.main), name


def test_the_command_list_and_an_unknown_command(capsys):
    cli.main(["--help"])
    listing = capsys.readouterr().out
    assert listing.startswith("usage: hf-vit-reduction <command> [<args>]")
    assert all(f"\n  {name} " in listing for name in COMMANDS)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trian"])
    assert (
        str(exit_info.value) == f"error: 'trian' is not a command of hf-vit-reduction; allowed: {', '.join(COMMANDS)}"
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


def test_a_command_s_bad_flag_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["summary", "--jsn"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --jsn; did you mean --json?\n"
    with pytest.raises(SystemExit):
        cli.main(["summary", "--qqq", "--jsonn"])  # the nearest flag of each that has one
    assert capsys.readouterr().err == "error: unrecognized arguments: --qqq --jsonn; did you mean --json?\n"
    with pytest.raises(SystemExit):
        cli.main(["summary", "--help"])
    assert capsys.readouterr().out.startswith("usage: hf-vit-reduction summary ")


@pytest.mark.slow
def test_the_console_script_and_python_m_are_the_same_command():
    console = Path(sys.executable).with_name("hf-vit-reduction")
    outputs = [
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=HANG_S).stdout
        for command in ([str(console), "summary"], [sys.executable, "-m", "hf_vit_reduction", "summary"])
    ]
    # timm's ViT-B/16 (86,567,656) less 12 x half of each MLP's hidden units (768 x 1536 x 2 + 1536 weights each).
    assert 86_567_656 - 12 * (768 * 1536 * 2 + 1536) == 58_237_672
    assert outputs[0] == outputs[1] and "| ViT-B/16 shallow | shallow | 58,237,672 |" in outputs[0]


def core_only_site(tmp_path: Path) -> Path:
    """A folder holding, as links into this environment, only the distributions the core requirements pull in
    (transitively, under this platform's markers): what `pip install hf-vit-reduction` gives a Hub user."""
    environment = default_environment() | {"extra": ""}
    wanted, seen = list(CORE), set()
    while wanted:
        name = wanted.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        distribution = importlib.metadata.distribution(name)
        for requirement in map(Requirement, distribution.requires or ()):
            if requirement.marker is None or requirement.marker.evaluate(environment):
                wanted.append(requirement.name)
        site = Path(distribution.locate_file(""))
        for top in {Path(file).parts[0] for file in distribution.files or ()}:
            link, target = tmp_path / "site" / top, site / top
            if top != ".." and target.exists() and not link.exists():
                link.parent.mkdir(exist_ok=True)
                link.symlink_to(target)
    return tmp_path / "site"


@pytest.mark.slow
def test_a_core_only_install_loads_a_model_runs_the_pipeline_and_names_the_extra_for_training(tmp_path, make_model):
    site = core_only_site(tmp_path)
    model = make_model("grouped")
    model.config.id2label = {i: f"digit {i}" for i in range(10)}
    model.save_pretrained(tmp_path / "model")
    # The processor every saved model carries: without torchvision there, its PIL class.
    image_processor_for(32, crop_pct=1.0, interpolation="bicubic", mean=[0.5] * 3, std=[0.5] * 3).save_pretrained(
        tmp_path / "model"
    )
    photo = tmp_path / "photo.png"
    # At the model's size, so that the PIL processor here and the torchvision one there need not resize.
    Image.radial_gradient("L").convert("RGB").resize((32, 32)).save(photo)
    expected = pipeline("image-classification", model=str(tmp_path / "model"), top_k=3)(str(photo))

    # -S: no site-packages of this environment, only the core's distributions and the repository.
    environment = {"PYTHONPATH": f"{site}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    program = (
        "import importlib.util, json, sys\n"
        "extras = ['timm', 'datasets', 'accelerate', 'evaluate', 'sklearn', 'scipy', 'matplotlib', 'torchvision']\n"
        "assert [m for m in extras if importlib.util.find_spec(m)] == [], 'an extra is importable'\n"
        "import hf_vit_reduction\n"
        "from transformers import AutoModelForImageClassification, pipeline\n"
        f"model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'model')!r})\n"
        "assert type(model).__name__ == 'ViTReducedForImageClassification'\n"
        f"processor = pipeline('image-classification', model={str(tmp_path / 'model')!r}).image_processor\n"
        "assert type(processor).__name__ == 'ViTReducedImageProcessorPil', type(processor)\n"
        f"print(json.dumps(pipeline('image-classification', model={str(tmp_path / 'model')!r}, top_k=3)"
        f"({str(photo)!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", program],
        check=False,
        env=environment,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout.strip().splitlines()[-1])
    assert [p["label"] for p in predictions] == [p["label"] for p in expected]
    assert [p["score"] for p in predictions] == pytest.approx([p["score"] for p in expected], abs=1e-5)

    for command, extra in (
        ([str(ROOT / "run_image_classification.py"), "--epochs", "1"], "train"),
        (["-m", "hf_vit_reduction", "report", "runs", "--output_dir", str(tmp_path / "report")], "study"),
        (["-m", "hf_vit_reduction", "convert", "--help"], "train"),
        (["-m", "hf_vit_reduction", "train", "--help"], "train"),
    ):
        done = subprocess.run(
            [sys.executable, "-S", *command],
            check=False,
            env=environment,
            capture_output=True,
            text=True,
            timeout=HANG_S,
        )
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert f"pip install 'hf-vit-reduction[{extra}]'" in done.stderr
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_every_command_runs_from_a_wheel_install(tmp_path):
    """No repository, no script: each command from the console script of a fresh environment, the training ones for
    real (they need the package's shipped metric and card template), the others as far as their --help."""
    bin_dir = install_wheel(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    short = ["--max_train_steps", "2", "--max_eval_samples", "40", "--workers", "0", "--report_to", "none"]

    def run(*argv):
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=HANG_S, check=False)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
        return done.stdout

    assert run("hf-vit-reduction", "--help").count("\n  ") == len(COMMANDS)
    for name in COMMANDS:
        assert run("hf-vit-reduction", name, "--help").startswith(f"usage: hf-vit-reduction {name} ")
    run("hf-vit-reduction", "train", "--strategy", "baseline", "--output_dir", "run", *short)
    assert json.loads((work / "run" / "results.json").read_text())["steps"] == 2
    assert (work / "run" / "README.md").is_file()
    run(
        "hf-vit-reduction",
        "convert",
        "--from",
        "vit_reduced",
        "--input",
        "run",
        "--output_dir",
        "cut",
        "--strategy",
        "shallow",
    )
    assert json.loads((work / "cut" / "config.json").read_text())["reduction_strategy"] == "shallow"
    reproduced = [flag for flag in short if flag not in ("--report_to", "none")]  # reproduce sets --report_to
    run(
        "hf-vit-reduction",
        "reproduce",
        "--output_dir",
        "repro",
        "--strategies",
        "thin",
        "--seeds",
        "0",
        "--",
        *reproduced,
    )
    assert (work / "repro" / "report" / "report.md").is_file()
    assert "| ViT-B/16 thin | thin |" in run(str(bin_dir / "python"), "-m", "hf_vit_reduction", "summary")
