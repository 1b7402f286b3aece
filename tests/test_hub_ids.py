"""Models and datasets named by Hub id, against the strict loopback Hub of tests/hub_server.py.

`huggingface_hub` reads HF_ENDPOINT when it is imported, so every command runs in a subprocess (the slow tier). The
served repositories are seeded as their owners made them: a Transformers ViT (`google/vit-check`, also gated and
private copies), timm's Hub layout for a registry name with a tag (`timm/NAME.TAG`, as `save_for_hf` writes it) and
for a user's timm model, and a 🤗 Datasets repository of real photos.
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import timm
import torch
from conversion_sources import LABELS, PIXELS, max_difference, timm_vit, transformers_vit
from hub_server import DROP, HubServer, folder_files
from image_folders import sample_photos
from test_hub import READ_TOKEN, WRITE_TOKEN, client_env
from test_model_card import run_folder
from timm.models import save_for_hf
from transformers import ViTForImageClassification, ViTImageProcessor, pipeline

from hf_vit_reduction import ViTReducedForImageClassification

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
OTHER_TOKEN = "hf_loopbackOtherUser5Zq2"  # a user who is not "me"
TIMM_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # the default tag of vit_tiny_patch16_224 in timm 1.0
PHOTO_CLASSES = ("china", "flower")


def photo_dataset_files(root: Path) -> dict[str, bytes]:
    """A 🤗 Datasets repository as `push_to_hub` lays it out: one parquet file per split, real photos as PNG."""
    photos = sample_photos(24, seed=0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(PHOTO_CLASSES))})
    files = {"README.md": b"---\nlicense: bsd-3-clause\n---\n# Two photos, cropped\n"}
    for split, indices in (("train", range(16)), ("validation", range(16, 24))):
        images = []
        for index in indices:
            buffer = io.BytesIO()
            photos[index].save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        split_set = datasets.Dataset.from_dict(
            {"image": images, "label": [index % 2 for index in indices]}, features=features
        )
        split_set.to_parquet(root / f"{split}.parquet")
        files[f"data/{split}-00000-of-00001.parquet"] = (root / f"{split}.parquet").read_bytes()
    return files


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The server with its seeded repositories, and the local models they were made from."""
    root = tmp_path_factory.mktemp("served")
    vit = transformers_vit()
    vit.save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    vit_files = folder_files(root / "vit")
    # A second weights format that `from_pretrained` would not read when safetensors are there: never downloaded.
    with_bin = vit_files | {"pytorch_model.bin": b"\0not to be downloaded"}

    torch.manual_seed(1)
    registry = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    save_for_hf(registry, root / "registry", safe_serialization=True)

    users_timm = timm_vit(num_classes=2)
    save_for_hf(
        users_timm, root / "users_timm", model_config={"label_names": list(PHOTO_CLASSES)}, safe_serialization=True
    )

    tokens = {
        WRITE_TOKEN: {"user": "me", "write": True},
        READ_TOKEN: {"user": "me", "write": False},
        OTHER_TOKEN: {"user": "you", "write": False},
    }
    with HubServer(tokens) as server:
        commits = {
            "google/vit-check": server.add_repo("google/vit-check", with_bin),
            f"timm/{TIMM_NAME}": server.add_repo(f"timm/{TIMM_NAME}", folder_files(root / "registry")),
            "me/timm-tiny": server.add_repo("me/timm-tiny", folder_files(root / "users_timm")),
        }
        server.add_repo("org/gated", vit_files, gated=True)
        server.add_repo("org/gated-accepted", vit_files, gated=True, granted={"me"})
        server.add_repo("me/private-vit", vit_files, private=True)
        server.add_repo("datasets/me/photos", photo_dataset_files(root))
        server.add_repo("datasets/org/gated-photos", photo_dataset_files(root), gated=True)
        yield {"server": server, "commits": commits, "vit": vit, "registry": registry, "users_timm": users_timm}


def command(hub, home: Path, *argv, token=WRITE_TOKEN, **env) -> subprocess.CompletedProcess:
    environment = client_env(hub["server"].url, home, token=token) | {"OMP_NUM_THREADS": "1"} | env
    return subprocess.run(
        [sys.executable, "-m", "hf_vit_reduction", *map(str, argv)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def error_line(result: subprocess.CompletedProcess, status: int = 2) -> str:
    """The one line a refused command prints: `error: ...`, with no traceback. `train` and `evaluate` end a refusal
    with status 1 (SystemExit with the line)."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Fetching ")]
    assert result.returncode == status and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def push(hub, home: Path, folder: Path, repo_id: str) -> str:
    """`hf-vit-reduction push` of `folder` to `repo_id`; the commit it made."""
    succeeded(command(hub, home, "push", folder, "--hub_model_id", repo_id))
    return hub["server"].commits(repo_id)[-1].oid


@torch.no_grad()
def converted_logits(folder: Path, pixels: torch.Tensor) -> torch.Tensor:
    return ViTReducedForImageClassification.from_pretrained(folder).eval()(pixel_values=pixels).logits


def provenance(folder: Path) -> dict:
    return json.loads((folder / "provenance.json").read_text())


def test_a_transformers_hub_id_converts_at_a_revision_and_then_offline_from_the_cache(hub, tmp_path):
    server, commit = hub["server"], hub["commits"]["google/vit-check"]
    home = tmp_path / "home"
    succeeded(
        command(
            hub,
            home,
            "convert",
            "--from",
            "transformers",
            "--input",
            "google/vit-check",
            "--output_dir",
            tmp_path / "out",
        )
    )
    with torch.no_grad():
        expected = hub["vit"](pixel_values=PIXELS).logits
    assert max_difference(converted_logits(tmp_path / "out", PIXELS), expected) < 1e-5
    assert provenance(tmp_path / "out")["source"] == f"transformers google/vit-check@{commit}"
    assert f"google/vit-check@{commit}" in (tmp_path / "out" / "README.md").read_text()
    snapshot = home / "hub" / "models--google--vit-check" / "snapshots" / commit
    assert sorted(path.name for path in snapshot.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert not any("pytorch_model.bin" in path and method == "GET" for method, path, _ in server.requests)

    at_commit = command(
        hub,
        home,
        "convert",
        "--from",
        "transformers",
        "--input",
        "google/vit-check",
        "--revision",
        commit,
        "--output_dir",
        tmp_path / "at-commit",
    )
    succeeded(at_commit)
    assert torch.equal(converted_logits(tmp_path / "at-commit", PIXELS), converted_logits(tmp_path / "out", PIXELS))
    line = error_line(
        command(
            hub,
            home,
            "convert",
            "--from",
            "transformers",
            "--input",
            "google/vit-check",
            "--revision",
            "v9",
            "--output_dir",
            tmp_path / "v9",
        )
    )
    assert "'google/vit-check' has no revision 'v9'" in line and not (tmp_path / "v9").exists()

    # Offline, the cache serves what was downloaded, and an id it lacks is one line; no request leaves.
    before = len(server.requests)
    offline = {"HF_HUB_OFFLINE": "1"}
    argv = ("convert", "--from", "transformers", "--input", "google/vit-check", "--output_dir", tmp_path / "offline")
    succeeded(command(hub, home, *argv, **offline))
    assert torch.equal(converted_logits(tmp_path / "offline", PIXELS), converted_logits(tmp_path / "out", PIXELS))
    missing = command(
        hub,
        home,
        "convert",
        "--from",
        "transformers",
        "--input",
        "me/private-vit",
        "--output_dir",
        tmp_path / "o2",
        **offline,
    )
    assert "'me/private-vit' is not in the local Hub cache" in error_line(missing)
    assert "HF_HUB_OFFLINE=1" in error_line(missing) and not (tmp_path / "o2").exists()
    assert len(server.requests) == before


@pytest.mark.parametrize(
    "input_id, token, flags, message",
    [
        (
            "org/gated",
            WRITE_TOKEN,
            (),
            "'org/gated' is a gated repository that this token may not read: accept its terms on the Hub",
        ),
        (
            "me/private-vit",
            OTHER_TOKEN,
            (),
            "or it is private and not readable with the token from --hub_token or HF_TOKEN",
        ),
        ("me/absent", WRITE_TOKEN, (), "'me/absent' is neither a local folder nor a repository on the Hub"),
        ("google/vit-check", "hf_notAToken", (), "refused the token from --hub_token or HF_TOKEN as invalid"),
        ("me/private-vit", None, ("--hub_token", OTHER_TOKEN), "not readable with the token from --hub_token"),
        (
            "org/gated",
            None,
            (),
            "'org/gated' is a gated repository and no token was sent: accept its terms on the Hub (http://127.0.0.1:",
        ),
        ("me/private-vit", None, (), "or it is private and no valid token was sent (pass one with --hub_token or HF_"),
    ],
)
def test_a_hub_id_that_cannot_be_read_is_one_line_naming_it_and_writes_nothing(
    hub, tmp_path, input_id, token, flags, message
):
    result = command(
        hub,
        tmp_path / "home",
        "convert",
        "--from",
        "transformers",
        "--input",
        input_id,
        *flags,
        "--output_dir",
        tmp_path / "out",
        token=token,
    )
    assert message in error_line(result)
    assert not (tmp_path / "out").exists()


def test_a_gated_repository_whose_terms_were_accepted_and_a_private_one_read_with_hub_token(hub, tmp_path):
    home = tmp_path / "home"
    succeeded(
        command(
            hub,
            home,
            "convert",
            "--from",
            "transformers",
            "--input",
            "org/gated-accepted",
            "--output_dir",
            tmp_path / "gated",
        )
    )
    succeeded(
        command(
            hub,
            home,
            "convert",
            "--from",
            "transformers",
            "--input",
            "me/private-vit",
            "--hub_token",
            READ_TOKEN,
            "--output_dir",
            tmp_path / "private",
            token=None,
        )
    )
    expected = converted_logits(tmp_path / "gated", PIXELS)
    assert torch.equal(converted_logits(tmp_path / "private", PIXELS), expected)


def test_a_public_repository_downloads_without_any_token(hub, tmp_path):
    argv = ("convert", "--from", "transformers", "--input", "google/vit-check", "--output_dir", tmp_path / "out")
    succeeded(command(hub, tmp_path / "home", *argv, token=None))
    with torch.no_grad():
        expected = hub["vit"](pixel_values=PIXELS).logits
    assert max_difference(converted_logits(tmp_path / "out", PIXELS), expected) < 1e-5


@pytest.mark.parametrize("name", [TIMM_NAME, "vit_tiny_patch16_224"])
def test_a_timm_name_downloads_the_weights_its_registry_names(hub, tmp_path, name):
    """With or without its tag, the name resolves to timm/NAME.TAG on the Hub, served here."""
    out = tmp_path / "out"
    result = succeeded(
        command(hub, tmp_path / "home", "convert", "--from", "timm", "--input", name, "--output_dir", out)
    )
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hub["registry"](pixels)
    assert max_difference(converted_logits(out, pixels), expected) < 1e-4
    model = ViTReducedForImageClassification.from_pretrained(out)
    assert model.config.id2label[0] == "tench, Tinca tinca"  # ImageNet's description, as timm_label_names reads it
    assert f"timm/{TIMM_NAME}" in provenance(out)["source"] and "weights" not in provenance(out)
    assert "RANDOM" not in result.stdout


def test_random_weights_only_when_asked_and_said_everywhere(hub, tmp_path):
    out = tmp_path / "random"
    before = len(hub["server"].requests)
    result = succeeded(
        command(
            hub,
            tmp_path / "home",
            "convert",
            "--from",
            "timm",
            "--input",
            TIMM_NAME,
            "--random_weights",
            "--output_dir",
            out,
        )
    )
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        served = hub["registry"](pixels)
    assert max_difference(converted_logits(out, pixels), served) > 1e-2  # not the served weights
    assert "RANDOM weights (--random_weights" in result.stdout
    assert provenance(out)["weights"] == "random (--random_weights)"
    assert "random (--random_weights): untrained" in (out / "README.md").read_text()
    assert not any(TIMM_NAME in path for _, path, _ in hub["server"].requests[before:])  # nothing downloaded


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "vit_tiny_patch16_225",
            "--input 'vit_tiny_patch16_225' is not a timm model name, a file, a folder nor a Hub id; close names: vit_tiny_patch16_224",
        ),
        (
            "vit_tiny_patch16_224.nope",
            "timm has no pretrained weights for the tag 'nope' of 'vit_tiny_patch16_224'; its tags with weights: vit_tiny_patch16_224.augreg_in21k",
        ),
    ],
)
def test_a_timm_name_or_tag_without_weights_is_one_line_before_any_request(hub, tmp_path, name, message):
    before = len(hub["server"].requests)
    result = command(
        hub, tmp_path / "home", "convert", "--from", "timm", "--input", name, "--output_dir", tmp_path / "out"
    )
    assert message in error_line(result)
    assert len(hub["server"].requests) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "source, input_name",
    [("timm", "me/timm-tiny"), ("timm", "hf-hub:me/timm-tiny"), ("transformers", "me/timm-tiny")],
)
def test_a_timm_repository_on_the_hub_converts_as_a_timm_source(hub, tmp_path, source, input_name):
    out = tmp_path / "out"
    succeeded(command(hub, tmp_path / "home", "convert", "--from", source, "--input", input_name, "--output_dir", out))
    with torch.no_grad():
        expected = hub["users_timm"](PIXELS)
    assert max_difference(converted_logits(out, PIXELS), expected) < 1e-5
    assert ViTReducedForImageClassification.from_pretrained(out).config.id2label == dict(enumerate(PHOTO_CLASSES))
    assert provenance(out)["source"].endswith(f"me/timm-tiny@{hub['commits']['me/timm-tiny']}")


def test_a_lost_connection_is_retried_as_huggingface_hub_retries_then_one_line(hub, tmp_path):
    server = hub["server"]
    argv = ("convert", "--from", "transformers", "--input", "google/vit-check")

    def dropped_downloads(since: int) -> int:
        return sum(method == "GET" and status == DROP for method, _, status in server.requests[since:])

    before = len(server.requests)
    server.drop("resolve", method="GET")  # the first file download loses its connection
    succeeded(command(hub, tmp_path / "home", *argv, "--output_dir", tmp_path / "out"))
    assert server.clear_failures() == [] and dropped_downloads(before) == 1
    with torch.no_grad():
        assert (
            max_difference(converted_logits(tmp_path / "out", PIXELS), hub["vit"](pixel_values=PIXELS).logits) < 1e-5
        )

    before = len(server.requests)
    server.drop("resolve", times=100, method="GET")  # a connection that never holds
    result = command(hub, tmp_path / "home2", *argv, "--output_dir", tmp_path / "lost")
    server.clear_failures()
    # huggingface_hub warns of each retry as it makes it; then the command ends in its one line.
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    assert "'google/vit-check' could not be downloaded" in lines[-1] and dropped_downloads(before) > 1
    assert not (tmp_path / "lost").exists()


def test_a_users_flow_from_a_hub_id_with_hub_data(hub, tmp_path):
    """Convert a Hub id, push it, fine-tune it by its Hub id on a Hub dataset with a new head, push that (the
    teacher), cut it by its Hub id calibrated on that data, recover it by distillation from the teacher's Hub id,
    then score it beside the teacher named by Hub id and by folder, and predict with the teacher's Hub id."""
    home = tmp_path / "home"
    vit_commit = hub["commits"]["google/vit-check"]
    data = ("--dataset_name", "me/photos")
    short = ("--recipe", "finetune", "--max_train_steps", "2", "--batch_size", "8", "--workers", "0")
    short += ("--report_to", "none")
    succeeded(
        command(
            hub,
            home,
            "convert",
            "--from",
            "transformers",
            "--input",
            "google/vit-check",
            "--output_dir",
            tmp_path / "baseline",
        )
    )
    baseline_commit = push(hub, home, tmp_path / "baseline", "me/vit-check-baseline")
    finetuned = tmp_path / "finetuned"
    succeeded(
        command(
            hub,
            home,
            "train",
            "--model_name_or_path",
            "me/vit-check-baseline",
            "--ignore_mismatched_sizes",
            *data,
            *short,
            "--output_dir",
            finetuned,
        )
    )
    record = json.loads((finetuned / "results.json").read_text())["provenance"]
    assert record["recovered_from"] == f"me/vit-check-baseline@{baseline_commit}"
    assert record["cut"]["source"] == f"transformers google/vit-check@{vit_commit}"  # the downloaded provenance
    assert record["labels"]["labels"] == "new head" and record["labels"]["model_labels"] == LABELS
    teacher_commit = push(hub, home, finetuned, "me/vit-check-photos")

    cut = tmp_path / "cut"
    succeeded(
        command(
            hub,
            home,
            "convert",
            "--from",
            "vit_reduced",
            "--input",
            "me/vit-check-photos",
            "--strategy",
            "shallow",
            "--prune_method",
            "activation",
            "--calibration_samples",
            "8",
            *data,
            "--output_dir",
            cut,
        )
    )
    assert provenance(cut)["source"] == f"vit_reduced me/vit-check-photos@{teacher_commit}"
    assert "me/photos" in provenance(cut)["calibration"]["data"]
    recovered = tmp_path / "recovered"
    succeeded(
        command(
            hub,
            home,
            "train",
            "--model_name_or_path",
            cut,
            "--teacher_model_name_or_path",
            "me/vit-check-photos",
            *data,
            *short,
            "--output_dir",
            recovered,
        )
    )
    distillation = json.loads((recovered / "results.json").read_text())["provenance"]["distillation"]
    assert distillation["teacher"] == f"me/vit-check-photos@{teacher_commit}"

    scores = tmp_path / "scores.json"
    succeeded(
        command(hub, home, "evaluate", "me/vit-check-photos", finetuned, recovered, *data, "--results_file", scores)
    )
    by_id, by_folder, _ = json.loads(scores.read_text())
    assert by_id["model"] == "me/vit-check-photos" and by_id["images"] == 8
    assert (by_id["top1"], by_id["loss"]) == (by_folder["top1"], by_folder["loss"])  # one model, named two ways

    photos = tmp_path / "photos"
    photos.mkdir()
    for index, photo in enumerate(sample_photos(4, seed=3)):
        photo.save(photos / f"{index}.png")
    predictions = tmp_path / "predictions.jsonl"
    succeeded(
        command(hub, home, "predict", "me/vit-check-photos", photos, "--output_file", predictions, "--top_k", "1")
    )
    predicted = {
        Path(line["file"]).name: line["labels"][0] for line in map(json.loads, predictions.read_text().splitlines())
    }
    classify = pipeline("image-classification", model=str(finetuned))  # the same model, from its folder
    assert predicted == {path.name: classify(str(path))[0]["label"] for path in sorted(photos.iterdir())}


def test_a_pushed_runs_card_by_hub_id_is_its_folders_card_and_the_cache_is_not_written(hub, tmp_path, make_model):
    server, home = hub["server"], tmp_path / "home"
    run = run_folder(tmp_path / "run", make_model("grouped"))
    commit = push(hub, home, run, "me/run-grouped")
    pushed = set(server.files("me/run-grouped"))
    assert "model.safetensors" in pushed

    before = len(server.requests)
    refused = error_line(command(hub, home, "card", "me/run-grouped"))
    assert (
        "model 'me/run-grouped' is not a local folder, so it is a Hub id, and a Hub id's card needs --output_file"
        in (refused)
    )
    assert len(server.requests) == before  # refused before any request

    result = succeeded(command(hub, home, "card", "me/run-grouped", "--output_file", tmp_path / "hub.md"))
    assert result.stdout == f"wrote {tmp_path / 'hub.md'}\n"
    local = ("card", run, "--hub_model_id", "me/run-grouped", "--output_file", tmp_path / "local.md")
    succeeded(command(hub, home, *local))
    text = (tmp_path / "hub.md").read_text()
    assert text == (tmp_path / "local.md").read_text()
    # The run's numbers as run_folder wrote them: results.json, and history.jsonl's last row for the raw weights.
    assert "| final, EMA | 96.39 | 99.72 |" in text and "| final, raw weights | 95.83 | 100.00 |" in text
    assert "![Training curves: losses and top-1 per epoch](training_curves.png)" in text
    assert 'from_pretrained("me/run-grouped", trust_remote_code=True)' in text
    # What the card reads was downloaded, the weights were not, and nothing was written into the snapshot.
    snapshot = home / "hub" / "models--me--run-grouped" / "snapshots" / commit
    read = {name for name in pushed if name.endswith(".json")} | {"history.jsonl", "training_curves.png"}
    assert {path.name for path in snapshot.iterdir()} == read


@pytest.mark.parametrize(
    "model_id, message",
    [
        ("org/gated", "error: model 'org/gated' is a gated repository that this token may not read: accept its terms"),
        ("me/absent", "error: model 'me/absent' is neither a local folder nor a repository on the Hub"),
    ],
)
def test_a_card_of_a_hub_id_that_cannot_be_read_is_one_line_and_writes_nothing(hub, tmp_path, model_id, message):
    result = command(hub, tmp_path / "home", "card", model_id, "--output_file", tmp_path / "card.md")
    assert error_line(result).startswith(message) and not (tmp_path / "card.md").exists()


def test_export_by_hub_id_loads_in_transformers_with_the_pushed_models_logits(hub, tmp_path, make_model):
    model = make_model("shallow")
    model.save_pretrained(tmp_path / "shallow")
    push(hub, tmp_path / "home", tmp_path / "shallow", "me/vit-shallow")
    out = tmp_path / "native"
    succeeded(command(hub, tmp_path / "home", "export", "me/vit-shallow", out, "--format", "transformers"))
    native = ViTForImageClassification.from_pretrained(out).eval()
    assert native.config.intermediate_size == model.config.mlp_hidden_size  # the kept width
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_difference(native(pixel_values=pixels).logits, model(pixel_values=pixels).logits) < 1e-5


GATED_DATASET = (
    "is a gated dataset repository that this token may not read: accept its terms on the Hub "
    "({url}/datasets/org/gated-photos), then pass a token of that account (HF_TOKEN or `hf auth login`)"
)
ABSENT_DATASET = (
    "is neither a local folder nor a dataset repository on the Hub ({url}), or it is private and not readable with "
    "the token from HF_TOKEN or `hf auth login`"
)


@pytest.mark.parametrize(
    "argv, dataset, message",
    [
        (("evaluate", "google/vit-check"), "org/gated-photos", GATED_DATASET),
        (("train", "--output_dir", "{tmp}/run"), "org/gated-photos", GATED_DATASET),
        (("evaluate", "google/vit-check"), "me/absent-photos", ABSENT_DATASET),
    ],
)
def test_a_dataset_id_the_hub_refuses_is_one_line_naming_it_and_which(hub, tmp_path, argv, dataset, message):
    result = command(hub, tmp_path / "home", *[arg.format(tmp=tmp_path) for arg in argv], "--dataset_name", dataset)
    line = error_line(result, status=1)
    assert line == f"error: --dataset_name {dataset!r} {message.format(url=hub['server'].url)}"
    assert not (tmp_path / "run").exists()
