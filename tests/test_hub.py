"""Publishing to the Hub, against the strict loopback server of tests/hub_server.py.

`huggingface_hub` reads HF_ENDPOINT when it is imported, so every client runs in a subprocess (the slow tier);
the fast tests cover what needs no network: argument checks and failures caught before any request.
"""

import argparse
import hashlib
import json
import os
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import torch
from hub_server import DROP, HubServer
from script_runs import HANG_S
from transformers import ViTImageProcessor

from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification
from hf_vit_reduction.hub import pushing
from hf_vit_reduction.hub.model_card import write_model_card
from hf_vit_reduction.hub.pushing import (
    HubPusher,
    HubPushError,
    add_hub_arguments,
    check_hub_arguments,
    main,
    push_to_hub,
)

ROOT = Path(__file__).resolve().parents[1]
WRITE_TOKEN = "hf_loopbackWriteToken7Q2x9"
READ_TOKEN = "hf_loopbackReadToken3Kd81"
CLIENT_TIMEOUT_S = HANG_S  # only against a hang


def build_model_folder(folder: Path, seed: int, results: dict | None = None) -> Path:
    """A run's output folder: model, processor, run outputs, card, plus what must stay local."""
    torch.manual_seed(seed)
    config = ViTReducedConfig.from_preset(
        "digits", reduction_strategy="grouped", num_labels=10, id2label={i: str(i) for i in range(10)}
    )
    ViTReducedForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
    results = results or {
        "final_top1": 91.25,
        "final_top5": 99.5,
        "peak_top1": 92.0,
        "peak_top5": 99.75,
        "peak_epoch": 3,
        "delta_peak_final": 0.75,
        "seed": seed,
        "epochs": 5,
        "steps": 110,
        "wall_time_s": 30.0,
        "train_images_per_s": 200.0,
        "eval_samples": 360,
        "data": "digits (scikit-learn, embedded)",
        "reported": "ema",
        "num_processes": 1,
    }
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "args.json").write_text(json.dumps({"strategy": "grouped", "seed": seed}))
    (folder / "history.jsonl").write_text(json.dumps({"epoch": 4, "top1": 91.25, "top5": 99.5}) + "\n")
    (folder / "training_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    write_model_card(folder, repo_id="me/vit-grouped")
    (folder / "checkpoints" / "step_00000110").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints" / "step_00000110" / "optimizer.bin").write_bytes(b"\0optimizer state")
    (folder / ".results.json.tmp").write_text("{}")
    return folder


def pushed_files(folder: Path) -> dict[str, bytes]:
    """What a push of `folder` must upload: everything but checkpoints/ and hidden temporary files."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and not path.relative_to(folder).as_posix().startswith(("checkpoints/", "."))
    }


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's digest and modification time: proof that a push changed nothing local."""
    return {
        str(path): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def client_env(endpoint: str, home: Path, token: str | None = WRITE_TOKEN, package: bool = True) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHONPATH"))}
    env |= {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",  # uploads through the LFS batch API, which this server serves
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if token is not None:
        env["HF_TOKEN"] = token
    if package:
        env["PYTHONPATH"] = str(ROOT)
    return env


def run_client(code: str, env: dict, cwd: Path, *args: str, python=sys.executable) -> subprocess.CompletedProcess:
    command = [str(python), "-c", textwrap.dedent(code), *args]
    return subprocess.run(
        command, check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
    )


def push_command(folder: Path, repo_id: str, env: dict, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf_vit_reduction", "push", str(folder), "--hub_model_id", repo_id, *flags]
    return subprocess.run(
        command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
    )


def expected_logits(folder: Path, into: Path) -> Path:
    """Fixed images and the local model's logits on them, for clients to compare with."""
    torch.manual_seed(123)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = ViTReducedForImageClassification.from_pretrained(folder).eval()(pixel_values=pixels).logits
    torch.save({"pixels": pixels, "logits": logits}, into)
    return into


LOAD_AND_COMPARE = """
    import importlib.util, json, sys
    import numpy, torch
    from PIL import Image
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification, pipeline

    repo_id, expected_path, remote_code = sys.argv[1], sys.argv[2], sys.argv[3] == "remote"
    if not remote_code:
        import hf_vit_reduction  # registers the Auto classes, as the card's first snippet does
    expected = torch.load(expected_path)
    model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=remote_code).eval()
    with torch.no_grad():
        logits = model(pixel_values=expected["pixels"]).logits
    classifier = pipeline("image-classification", model=repo_id, trust_remote_code=remote_code, top_k=10)
    image = Image.fromarray(numpy.full((32, 32, 3), 200, dtype=numpy.uint8))
    with torch.no_grad():
        processed = classifier.image_processor(image, return_tensors="pt")
        direct = model(**processed).logits.softmax(-1)[0]
    card = ModelCard.load(repo_id)
    print(json.dumps({
        "package_importable": importlib.util.find_spec("hf_vit_reduction") is not None,
        "model_module": type(model).__module__,
        "identical_logits": torch.equal(logits, expected["logits"]),
        "max_logit_difference": (logits - expected["logits"]).abs().max().item(),
        "pipeline": classifier(image),
        "direct_scores": direct.tolist(),
        "id2label": model.config.id2label,
        "metrics": {result.metric_type: result.metric_value for result in card.data.eval_results},
    }))
"""


@pytest.fixture(scope="module")
def server():
    tokens = {WRITE_TOKEN: {"user": "me", "write": True}, READ_TOKEN: {"user": "me", "write": False}}
    with HubServer(tokens) as hub:
        yield hub


@pytest.fixture(scope="module")
def pushed(server, tmp_path_factory):
    """The folder pushed to me/vit-grouped with the push command, and the command's result."""
    root = tmp_path_factory.mktemp("pushed")
    folder = build_model_folder(root / "run", seed=0)
    before = snapshot(folder)
    result = push_command(folder, "me/vit-grouped", client_env(server.url, root / "home"), "--commit_message", "v1")
    assert result.returncode == 0, result.stderr
    assert snapshot(folder) == before
    return {"folder": folder, "result": result, "root": root, "expected": expected_logits(folder, root / "logits.pt")}


# The fast tier: no request leaves the process.


def parse_hub_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_hub_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_hub_arguments_use_trainer_names():
    args = parse_hub_arguments(["--push_to_hub", "--hub_model_id", "me/vit", "--hub_private_repo"])
    assert (args.push_to_hub, args.hub_model_id, args.hub_private_repo) == (True, "me/vit", True)
    assert (args.hub_strategy, args.hub_token, args.hub_revision) == ("every_save", None, None)
    with pytest.raises(SystemExit):
        parse_hub_arguments(["--hub_strategy", "sometimes"])


def test_hub_argument_problems_are_one_line(no_token):
    assert check_hub_arguments(parse_hub_arguments([])) is None
    assert check_hub_arguments(parse_hub_arguments(["--push_to_hub"])) == (
        "--push_to_hub needs --hub_model_id (e.g. your-name/vit-grouped)"
    )
    problem = check_hub_arguments(parse_hub_arguments(["--push_to_hub", "--hub_model_id", "me/a b"]))
    assert problem.startswith("--hub_model_id='me/a b' is not valid; allowed: ")
    assert check_hub_arguments(parse_hub_arguments(["--push_to_hub", "--hub_model_id", "me/vit"])) == (
        "--push_to_hub needs a token: pass --hub_token, set HF_TOKEN or run `hf auth login`"
    )
    with_token = ["--push_to_hub", "--hub_model_id", "me/vit", "--hub_token", "hf_x"]
    assert check_hub_arguments(parse_hub_arguments(with_token)) is None


def test_retry_flags_are_checked():
    base = ["--push_to_hub", "--hub_model_id", "me/vit", "--hub_token", "hf_x"]
    args = parse_hub_arguments(base)
    assert (args.hub_push_attempts, args.hub_push_max_wait) == (5, 120.0)
    assert check_hub_arguments(parse_hub_arguments([*base, "--hub_push_attempts", "0"])) == (
        "--hub_push_attempts=0 is not valid; allowed: an integer >= 1"
    )
    assert check_hub_arguments(parse_hub_arguments([*base, "--hub_push_max_wait", "-1"])) == (
        "--hub_push_max_wait=-1.0 is not valid; allowed: a number of seconds >= 0"
    )


def test_retries_double_their_wait_within_both_bounds_and_only_for_failures_that_may_pass(tmp_path, monkeypatch):
    waits, calls = [], []
    monkeypatch.setattr(pushing.time, "sleep", waits.append)

    def refused(self, *args, **kwargs):
        calls.append(kwargs)
        raise httpx2.ConnectError("connection refused")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    with pytest.raises(HubPushError) as error:
        push_to_hub(tmp_path, "me/vit", token="hf_x", attempts=10, max_wait=20)
    assert waits == [2, 4, 8] and len(calls) == 4  # a fourth wait of 16 s would pass 20 s in all
    assert "(attempt 4 of at most 10, after 14 s of waiting)." in str(error.value)
    waits.clear()
    with pytest.raises(HubPushError, match=r"\(attempt 2 of at most 2, after 2 s of waiting\)"):
        push_to_hub(tmp_path, "me/vit", token="hf_x", attempts=2, max_wait=100)
    assert waits == [2]

    def invalid(self, *args, **kwargs):
        raise ValueError("not a valid repository")

    waits.clear()
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", invalid)
    with pytest.raises(HubPushError, match=r"ValueError: not a valid repository\. The local folder"):
        push_to_hub(tmp_path, "me/vit", token="hf_x", attempts=10, max_wait=100)
    assert waits == []


def test_push_of_a_missing_folder_fails_before_any_request(tmp_path):
    with pytest.raises(HubPushError, match=r"^.*missing is not a folder; nothing was pushed$"):
        push_to_hub(tmp_path / "missing", "me/vit", token="hf_x")
    with pytest.raises(SystemExit, match=r"^error: .*missing is not a folder; nothing was pushed$"):
        main([str(tmp_path / "missing"), "--hub_model_id", "me/vit", "--hub_token", "hf_x"])


def test_push_without_a_token_fails_before_any_request(tmp_path, no_token):
    with pytest.raises(
        HubPushError, match="no Hub token to push .* pass --hub_token, set HF_TOKEN or run `hf auth login`"
    ):
        push_to_hub(tmp_path, "me/vit")


def test_offline_push_fails_in_one_line_and_changes_nothing(make_model, tmp_path):
    make_model("shallow").save_pretrained(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(HubPushError) as failure:
        push_to_hub(tmp_path, "me/vit", token="hf_offline_secret")  # the tests run with HF_HUB_OFFLINE=1
    message = str(failure.value)
    assert "\n" not in message and "hf_offline_secret" not in message
    assert message.startswith(f"pushing {tmp_path} to me/vit failed while creating the repository: HF_HUB_OFFLINE")
    assert message.endswith(f"`hf-vit-reduction push {tmp_path} --hub_model_id me/vit`")
    assert f"The local folder {tmp_path} is complete and unchanged" in message
    assert snapshot(tmp_path) == before


def test_pusher_refuses_an_unknown_strategy_before_any_request():
    with pytest.raises(ValueError, match="strategy='sometimes' is not valid; allowed: end, every_save, checkpoint"):
        HubPusher("me/vit", token="hf_x", strategy="sometimes")


# The slow tier: clients in subprocesses against the server.


@pytest.mark.slow
def test_push_command_uploads_the_folder_in_one_commit(server, pushed):
    folder = pushed["folder"]
    assert f"pushed {folder} to {server.url}/me/vit-grouped (commit " in pushed["result"].stdout
    commits = server.commits("me/vit-grouped")
    assert [commit.summary for commit in commits] == ["initial commit", "v1"]
    assert server.files("me/vit-grouped") == {".gitattributes": b""} | pushed_files(folder)
    assert {"model.safetensors", "training_curves.png"} <= commits[-1].lfs_paths
    config = json.loads(server.files("me/vit-grouped")["config.json"])
    assert config["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_vit_reduced.ViTReducedForImageClassification"
    )


@pytest.mark.slow
def test_hub_repository_loads_with_the_package(server, pushed):
    env = client_env(server.url, pushed["root"] / "home-load")
    result = run_client(LOAD_AND_COMPARE, env, pushed["root"], "me/vit-grouped", str(pushed["expected"]), "package")
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded["package_importable"] and loaded["model_module"] == "hf_vit_reduction.modeling_vit_reduced"
    assert loaded["identical_logits"]
    check_pipeline_and_card(loaded)


@pytest.mark.slow
def test_hub_repository_loads_with_remote_code_where_the_package_is_not_importable(
    server, pushed, python_without_package
):
    env = client_env(server.url, pushed["root"] / "home-remote", package=False)
    arguments = ("me/vit-grouped", str(pushed["expected"]), "remote")
    result = run_client(LOAD_AND_COMPARE, env, pushed["root"], *arguments, python=python_without_package)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert not loaded["package_importable"]
    assert loaded["model_module"].startswith("transformers_modules.")
    assert loaded["identical_logits"]
    check_pipeline_and_card(loaded)


def check_pipeline_and_card(loaded: dict) -> None:
    scores = {entry["label"]: entry["score"] for entry in loaded["pipeline"]}
    assert set(scores) == {str(i) for i in range(10)}
    for index, score in enumerate(loaded["direct_scores"]):
        assert scores[loaded["id2label"][str(index)]] == pytest.approx(score, abs=1e-6)
    assert loaded["metrics"] == {"accuracy": 91.25, "top_5_accuracy": 99.5}


@pytest.mark.slow
def test_second_push_of_a_changed_model_makes_a_second_commit(server, tmp_path):
    folder = build_model_folder(tmp_path / "run", seed=1)
    env = client_env(server.url, tmp_path / "home")
    assert push_command(folder, "me/second", env, "--hub_private_repo").returncode == 0
    assert server.repos["me/second"].private
    first_weights = server.files("me/second")["model.safetensors"]
    build_model_folder(folder, seed=2)  # retrained: new weights, same card and curves
    requests_before = len(server.requests)
    result = push_command(folder, "me/second", env, "--commit_message", "retrained")
    assert result.returncode == 0, result.stderr
    commits = server.commits("me/second")
    assert [commit.summary for commit in commits][1:] == ["Upload model with hf_vit_reduction", "retrained"]
    assert server.files("me/second") == {".gitattributes": b""} | pushed_files(folder)
    assert server.files("me/second")["model.safetensors"] != first_weights
    second_push = server.requests[requests_before:]
    assert ("POST", "/api/repos/create", 409) in second_push  # the existing repository is accepted
    uploads = [request for request in second_push if request[0] == "PUT"]
    assert len(uploads) == 1  # only the changed weights; the unchanged curves are not sent again
    main_files = server.files("me/second")
    build_model_folder(folder, seed=5)
    result = push_command(folder, "me/second", env, "--hub_revision", "experiment")  # a new branch, from main
    assert result.returncode == 0, result.stderr
    assert server.commits("me/second", "experiment")[:3] == server.commits("me/second")
    assert len(server.commits("me/second", "experiment")) == 4
    assert server.files("me/second", "experiment") == {".gitattributes": b""} | pushed_files(folder)
    assert server.files("me/second") == main_files


@pytest.mark.slow
def test_pusher_with_a_refused_token_fails_before_training(server, tmp_path):
    create = """
        from hf_vit_reduction.hub.pushing import HubPusher, HubPushError
        try:
            HubPusher("me/never-trained", token="hf_notAToken")
        except HubPushError as error:
            print(error)
    """
    result = run_client(create, client_env(server.url, tmp_path / "home", token=None), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "creating the Hub repository me/never-trained failed: the Hub refused the token (401"
    )
    assert "hf_notAToken" not in result.stdout and "me/never-trained" not in server.repos


@pytest.mark.slow
def test_transformers_push_to_hub_gives_a_loadable_repository(server, pushed, tmp_path, python_without_package):
    push = """
        import sys
        import hf_vit_reduction
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(sys.argv[1])
        model.push_to_hub("me/pushed-by-transformers")
        model.config.id2label  # the processor is the user's to push; the model alone must load
    """
    result = run_client(push, client_env(server.url, tmp_path / "home"), tmp_path, str(pushed["folder"]))
    assert result.returncode == 0, result.stderr
    files = server.files("me/pushed-by-transformers")
    assert {"config.json", "model.safetensors", "modeling_vit_reduced.py", "configuration_vit_reduced.py"} <= set(
        files
    )
    assert json.loads(files["config.json"])["auto_map"]["AutoConfig"] == "configuration_vit_reduced.ViTReducedConfig"
    load = """
        import importlib.util, sys, torch
        from transformers import AutoModelForImageClassification
        assert importlib.util.find_spec("hf_vit_reduction") is None
        expected = torch.load(sys.argv[2])
        model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        with torch.no_grad():
            print(torch.equal(model(pixel_values=expected["pixels"]).logits, expected["logits"]))
    """
    env = client_env(server.url, tmp_path / "home-remote", package=False)
    arguments = ("me/pushed-by-transformers", str(pushed["expected"]))
    result = run_client(load, env, tmp_path, *arguments, python=python_without_package)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


FAILURES = {  # case: (token, injected (route, status), what the line must say)
    "401": ("hf_unknownToken", None, "while creating the repository: the Hub refused the token (401: "),
    "403": (READ_TOKEN, None, "while creating the repository: the token may not write to me/fail-403 (403: "),
    "404": (
        WRITE_TOKEN,
        ("commit", 404),
        "while uploading {files} files: me/fail-404 or its revision was not found (404",
    ),
    "409": (
        WRITE_TOKEN,
        ("commit", 409),
        "while uploading {files} files: a conflicting change reached me/fail-409 first",
    ),
    "500": (WRITE_TOKEN, ("commit", 500), "while uploading {files} files: the Hub had a server error (500: "),
    "503": (WRITE_TOKEN, ("create", 503), "while creating the repository: the Hub had a server error (503: "),
    "refused": (WRITE_TOKEN, None, "while creating the repository: could not connect to http://127.0.0.1:"),
    "timeout": (WRITE_TOKEN, None, "while creating the repository: no answer from http://127.0.0.1:"),  # in 10 s
}


@pytest.mark.slow
@pytest.mark.parametrize("case", FAILURES)
def test_failed_push_ends_in_one_line_and_changes_nothing(server, tmp_path, case):
    token, injected, expected = FAILURES[case]
    folder = build_model_folder(tmp_path / "run", seed=3)
    before = snapshot(folder)
    endpoint = f"http://127.0.0.1:{closed_port()}" if case == "refused" else server.url
    if injected:
        server.fail(*injected)
    if case == "timeout":
        server.hold("create")
    try:
        result = push_command(
            folder,
            f"me/fail-{case}",
            client_env(endpoint, tmp_path / "home", token),
            "--timeout",
            "10",  # far longer than any answer takes, however loaded the machine: only a held route times out
            "--hub_push_attempts",
            "1",
        )
    finally:
        server.release()
        leftover = server.clear_failures()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "pushed" not in result.stdout
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: pushing {folder} to me/fail-{case} failed ")
    assert expected.format(files=len(pushed_files(folder))) in line
    assert (" within 10 s. " in line) == (case == "timeout")
    assert line.endswith(
        f"The local folder {folder} is complete and unchanged; push it again with "
        f"`hf-vit-reduction push {folder} --hub_model_id me/fail-{case}`"
    )
    assert token not in result.stderr + result.stdout
    assert leftover == []  # the injected failure was met where expected
    assert snapshot(folder) == before
    if case != "refused":
        assert f"me/fail-{case}" not in server.repos or len(server.commits(f"me/fail-{case}")) == 1


@pytest.mark.slow
def test_a_push_outlasts_a_time_out_a_server_error_and_a_dropped_connection(server, tmp_path):
    folder = build_model_folder(tmp_path / "run", seed=5)
    # The client gives up after 10 s, far longer than any answer takes however loaded the machine: only the
    # stalled one (30 s) times out.
    server.stall("create", 30)
    server.fail("commit", 500)
    server.drop("commit")  # the server goes away halfway through the commit request
    env = client_env(server.url, tmp_path / "home")
    start = time.monotonic()
    result = push_command(
        folder, "me/retried", env, "--timeout", "10", "--hub_push_attempts", "4", "--hub_push_max_wait", "20"
    )
    assert result.returncode == 0, result.stderr
    assert server.clear_failures() == []
    retries = [line for line in result.stderr.splitlines() if "push to me/retried failed" in line]
    assert len(retries) == 3
    assert "(no answer from http://127.0.0.1:" in retries[0] and retries[0].endswith("attempt 2 in 2 s")
    assert "(the Hub had a server error (500: " in retries[1] and retries[1].endswith("attempt 3 in 4 s")
    assert retries[2].endswith("attempt 4 in 8 s")
    assert time.monotonic() - start >= 10 + 2 + 4 + 8  # the time-out and the three waits
    assert [commit.summary for commit in server.commits("me/retried")][-1] == "Upload model with hf_vit_reduction"
    assert server.files("me/retried")["model.safetensors"] == (folder / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_a_server_that_goes_away_leaves_the_previous_commit_and_the_command_to_push_later(server, tmp_path):
    folder = build_model_folder(tmp_path / "run", seed=6)
    env = client_env(server.url, tmp_path / "home")
    assert push_command(folder, "me/goes-away", env, "--hub_revision", "dev").returncode == 0
    before = server.commits("me/goes-away", branch="dev")
    build_model_folder(folder, seed=7)  # a new model to push
    server.drop("commit", times=2)
    result = push_command(
        folder, "me/goes-away", env, "--hub_revision", "dev", "--hub_push_attempts", "2", "--hub_push_max_wait", "5"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert server.clear_failures() == []
    assert server.commits("me/goes-away", branch="dev") == before  # nothing half-committed
    line = result.stderr.strip().splitlines()[-1]
    assert "failed while uploading" in line and "(attempt 2 of at most 2, after 2 s of waiting)" in line
    assert line.endswith(
        f"push it again with `hf-vit-reduction push {folder} --hub_model_id me/goes-away --hub_revision dev`"
    )
    # The same command once the server is back: the new model lands in one commit.
    result = push_command(folder, "me/goes-away", env, "--hub_revision", "dev")
    assert result.returncode == 0, result.stderr
    assert len(server.commits("me/goes-away", branch="dev")) == len(before) + 1
    assert server.files("me/goes-away", "dev")["model.safetensors"] == (folder / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_an_upload_cut_off_midway_never_reaches_the_branch(server, tmp_path):
    folder = build_model_folder(tmp_path / "run", seed=8)
    env = client_env(server.url, tmp_path / "home")
    assert push_command(folder, "me/cut-off", env).returncode == 0
    before = server.commits("me/cut-off")
    build_model_folder(folder, seed=9)
    # The server goes away halfway through an object's upload (huggingface_hub sends it again) and is still failing
    # when the commit comes.
    server.drop("lfs-upload")
    server.fail("commit", 503)
    result = push_command(folder, "me/cut-off", env, "--hub_push_attempts", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert server.clear_failures() == []
    assert ("PUT", DROP) in {(method, status) for method, _, status in server.requests}
    assert server.commits("me/cut-off") == before
    assert (
        result.stderr.strip().splitlines()[-1].endswith(f"`hf-vit-reduction push {folder} --hub_model_id me/cut-off`")
    )


@pytest.mark.slow
@pytest.mark.parametrize("source", ["argument", "HF_TOKEN", "login cache"])
def test_token_sources_and_no_token_written(server, tmp_path, source):
    folder = build_model_folder(tmp_path / "run", seed=4)
    home = tmp_path / "home"
    env = client_env(server.url, home, token=WRITE_TOKEN if source == "HF_TOKEN" else None)
    flags = ["--hub_token", WRITE_TOKEN] if source == "argument" else []
    if source == "login cache":
        home.mkdir()
        (home / "token").write_text(WRITE_TOKEN)  # what `hf auth login` stores
    repo_id = f"me/token-{source.replace(' ', '-').lower()}"
    result = push_command(folder, repo_id, env, *flags)
    assert result.returncode == 0, result.stderr
    assert len(server.commits(repo_id)) == 2
    secret = WRITE_TOKEN.encode()
    assert not [path for path, data in server.files(repo_id).items() if secret in data]
    assert not [path for path in folder.rglob("*") if path.is_file() and secret in path.read_bytes()]
    assert WRITE_TOKEN not in result.stdout + result.stderr


# A training loop's saves, as run_image_classification.py makes them: the model and the run outputs at the top of
# the output folder, and a checkpoint folder per save. It waits for a line on stdin, writes results.json and
# makes its final push.
TRAINING_LOOP = """
    import hashlib, json, sys, time
    import torch
    from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification
    from hf_vit_reduction.hub.pushing import HubPusher

    run, repo_id, strategy, wait_each = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "wait"
    pusher = HubPusher(repo_id, strategy=strategy, attempts=int(sys.argv[5]))
    config = ViTReducedConfig.from_preset("digits", reduction_strategy="grouped", num_labels=10)
    for step in (1, 2, 3):
        torch.manual_seed(step)
        ViTReducedForImageClassification(config).save_pretrained(run)
        with open(f"{run}/history.jsonl", "a") as history:
            history.write(json.dumps({"epoch": step, "top1": 10.0 * step}) + "\\n")
        checkpoint = f"{run}/checkpoints/step_{step}"
        ViTReducedForImageClassification(config).save_pretrained(checkpoint)
        with open(f"{checkpoint}/train_state.json", "w") as state:
            json.dump({"step": step}, state)
        start = time.perf_counter()
        pusher.on_save(run, checkpoint=checkpoint, message=f"step {step}")
        seconds = time.perf_counter() - start
        weights = hashlib.sha256(open(f"{run}/model.safetensors", "rb").read()).hexdigest()
        print(json.dumps({"step": step, "on_save_s": seconds, "weights": weights}), flush=True)
        if wait_each:
            pusher.wait()
    print("loop done", flush=True)
    sys.stdin.readline()
    with open(f"{run}/results.json", "w") as results:  # what the script writes before its final push
        json.dump({"final_top1": 30.0}, results)
    print(json.dumps(pusher.finish(run)), flush=True)
"""


def start_loop(
    server, tmp_path, repo_id: str, strategy: str, wait_each: bool, attempts: int = 5
) -> tuple[subprocess.Popen, queue.Queue]:
    run = tmp_path / "run"
    run.mkdir()
    command = [sys.executable, "-c", textwrap.dedent(TRAINING_LOOP), str(run), repo_id, strategy]
    command += ["wait" if wait_each else "no-wait", str(attempts)]
    env = client_env(server.url, tmp_path / "home")
    loop = subprocess.Popen(command, env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in loop.stdout], daemon=True).start()
    return loop, lines


def read_until_loop_done(lines: queue.Queue) -> list[dict]:
    saves = []
    while (line := lines.get(timeout=CLIENT_TIMEOUT_S)) != "loop done":
        saves.append(json.loads(line))
    return saves


def finish_loop(loop: subprocess.Popen, lines: queue.Queue) -> dict:
    loop.stdin.write("finish\n")
    loop.stdin.flush()
    outcome = json.loads(lines.get(timeout=CLIENT_TIMEOUT_S))
    assert loop.wait(timeout=CLIENT_TIMEOUT_S) == 0
    return outcome


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["every_save", "checkpoint", "end"])
def test_background_pushes_leave_the_saves_on_the_server_while_training_goes_on(server, tmp_path, strategy):
    repo_id = f"me/loop-{strategy.replace('_', '-')}"
    server.hold("commit")  # the first background push cannot finish until the loop has gone on
    try:
        loop, lines = start_loop(server, tmp_path, repo_id, strategy, wait_each=False)
        saves = read_until_loop_done(lines)
        assert [save["step"] for save in saves] == [1, 2, 3]
        assert len(server.commits(repo_id)) == 1  # three saves done, no push landed yet
    finally:
        server.release()
    outcome = finish_loop(loop, lines)
    commits = server.commits(repo_id)
    run = tmp_path / "run"
    assert outcome["pushed"] and outcome["commit"] == commits[-1].oid and outcome["background_failures"] == []
    if strategy == "end":
        assert [commit.summary for commit in commits] == ["initial commit", "End of training"]
        assert outcome["background_pushes"] == 0
    else:
        # Step 2 came while step 1's push was running and was superseded by step 3 before its turn.
        assert [commit.summary for commit in commits] == ["initial commit", "step 1", "step 3", "End of training"]
        assert outcome["background_pushes"] == 2
        assert server.max_in_flight["commit"] == 1  # pushes one after the other, never two at once
        for commit, save in zip(commits[1:3], (saves[0], saves[2])):
            assert hashlib.sha256(commit.files["model.safetensors"]).hexdigest() == save["weights"]
        assert (
            commits[1].files["history.jsonl"].count(b"\n") == 1 and commits[2].files["history.jsonl"].count(b"\n") == 3
        )
    final = server.files(repo_id)
    assert not [path for path in final if path.startswith("checkpoints/")]
    last_checkpoint = {path: data for path, data in final.items() if path.startswith("last-checkpoint/")}
    if strategy == "checkpoint":
        assert json.loads(last_checkpoint["last-checkpoint/train_state.json"]) == {"step": 3}
        assert (
            last_checkpoint["last-checkpoint/model.safetensors"]
            == (run / "checkpoints/step_3/model.safetensors").read_bytes()
        )
    else:
        assert last_checkpoint == {}
    assert final["model.safetensors"] == (run / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_failed_background_push_is_reported_and_retried_and_never_stops_training(server, tmp_path):
    repo_id = "me/loop-failures"
    server.fail("commit", 500)  # the first background push fails
    loop, lines = start_loop(server, tmp_path, repo_id, "every_save", wait_each=True, attempts=1)
    saves = read_until_loop_done(lines)
    assert [save["step"] for save in saves] == [1, 2, 3]
    server.fail("commit", 503)  # and so does the final push
    outcome = finish_loop(loop, lines)
    assert [commit.summary for commit in server.commits(repo_id)] == ["initial commit", "step 2", "step 3"]
    assert "results.json" not in server.files(repo_id)
    assert outcome["pushed"] is False and outcome["background_pushes"] == 2
    assert "while uploading" in outcome["error"] and "the Hub had a server error (503: " in outcome["error"]
    assert outcome["error"].endswith(f"--hub_model_id {repo_id}`")
    (failure,) = outcome["background_failures"]
    assert "the Hub had a server error (500: " in failure
    assert f"The local folder {tmp_path / 'run'} is complete and unchanged" in failure
    assert server.clear_failures() == []


@pytest.mark.slow
def test_the_training_script_pushes_a_run_that_loads_anywhere(server, tmp_path, python_without_package):
    """`run_image_classification.py --push_to_hub`: saves pushed in the background, the final model with its card."""
    run = tmp_path / "run"
    env = client_env(server.url, tmp_path / "home")
    command = [
        sys.executable,
        str(ROOT / "run_image_classification.py"),
        "--strategy",
        "grouped",
        "--max_train_steps",
        "6",
        "--checkpointing_steps",
        "3",
        "--max_eval_samples",
        "32",
        "--workers",
        "0",
        "--report_to",
        "none",
        "--output_dir",
        str(run),
        "--push_to_hub",
        "--hub_model_id",
        "me/vit-grouped-script",
        "--hub_strategy",
        "checkpoint",
    ]
    result = subprocess.run(
        command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads((run / "results.json").read_text())["hub"]
    commits = server.commits("me/vit-grouped-script")
    assert outcome["pushed"] and outcome["commit"] == commits[-1].oid and outcome["background_failures"] == []
    assert commits[-1].summary == "End of training" and {"step 3", "step 6"} & {c.summary for c in commits}
    files = server.files("me/vit-grouped-script")
    assert files["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert {"config.json", "preprocessor_config.json", "modeling_vit_reduced.py", "README.md", "results.json"} <= set(
        files
    )
    assert json.loads(files["last-checkpoint/train_state.json"])["step"] == 6
    assert not [path for path in files if path.startswith("checkpoints/")]
    assert b"me/vit-grouped-script" in files["README.md"] and b"model-index" in files["README.md"]
    for path, data in files.items():
        assert WRITE_TOKEN.encode() not in data, path
    for path in run.rglob("*"):
        assert not path.is_file() or WRITE_TOKEN.encode() not in path.read_bytes(), path
    expected = expected_logits(run, tmp_path / "logits.pt")
    bare = client_env(server.url, tmp_path / "home-remote", package=False)
    loaded = run_client(
        LOAD_AND_COMPARE,
        bare,
        tmp_path,
        "me/vit-grouped-script",
        str(expected),
        "remote",
        python=python_without_package,
    )
    assert loaded.returncode == 0, loaded.stderr
    loaded = json.loads(loaded.stdout.splitlines()[-1])
    assert not loaded["package_importable"] and loaded["identical_logits"]
    # The card's model-index gives the run's top-1 in percent with two decimals.
    assert loaded["metrics"]["accuracy"] == round(json.loads((run / "results.json").read_text())["final_top1"], 2)
