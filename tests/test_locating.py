"""Where a named model is (`hub.locating`), without a Hub: a local folder wins, and offline (as conftest.py sets) the
cache alone serves. The downloads themselves are tests/test_hub_ids.py's, against the loopback Hub."""

import pytest

from hf_vit_reduction.hub.locating import locate_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache, in the layout huggingface_hub reads."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def cached_repository(cache, repo_id: str, files: dict[str, bytes]):
    """`repo_id` at main as a download leaves it: a snapshot folder named by its commit, and refs/main."""
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repository / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_a_local_folder_wins_over_the_hub_id_of_the_same_name(cache, tmp_path, monkeypatch):
    cached_repository(cache, "google/vit-check", {"config.json": b"{}"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "google" / "vit-check").mkdir(parents=True)
    located = locate_model("google/vit-check")
    assert (located.folder, located.repo_id, located.describe()) == ("google/vit-check", None, "google/vit-check")


def test_offline_the_cache_serves_a_hub_id_and_names_its_commit(cache):
    snapshot = cached_repository(cache, "google/vit-check", {"config.json": b"{}", "model.safetensors": b"w"})
    located = locate_model("google/vit-check", flag="--input")
    assert located.folder == str(snapshot) and located.describe() == f"google/vit-check@{COMMIT}"
    assert locate_model("google/vit-check", revision=COMMIT).folder == str(snapshot)


@pytest.mark.parametrize(
    "name, revision, message",
    [
        ("google/absent", None, "--input 'google/absent' is not in the local Hub cache ("),
        ("google/vit-check", "v2", "--input 'google/vit-check' at revision 'v2' is not in the local Hub cache"),
        ("/no/such/folder", None, "--input /no/such/folder does not exist: it is neither a local folder nor a Hub id"),
        ("a b/c", None, "--input a b/c does not exist: it is neither a local folder nor a Hub id (org/name)"),
    ],
)
def test_what_cannot_be_had_offline_is_one_line_naming_it(cache, name, revision, message):
    cached_repository(cache, "google/vit-check", {"config.json": b"{}"})
    with pytest.raises(ValueError) as error:
        locate_model(name, revision=revision, flag="--input")
    assert message in str(error.value) and "\n" not in str(error.value)
    if "cache" in message:
        assert "HF_HUB_OFFLINE=1 forbids downloading it" in str(error.value)


def test_a_file_is_not_a_model(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"w")
    with pytest.raises(ValueError, match="is a file; allowed: a model folder or a Hub id"):
        locate_model(str(tmp_path / "weights.safetensors"), flag="model")
