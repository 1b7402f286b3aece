"""Where a model a user names is: a local folder, or a Hub repository downloaded into the Hugging Face cache.

A local folder wins. Any other name is a Hub id (`google/vit-base-patch16-224`), read at `revision` with `token`
(None: `HF_TOKEN` or the login cache, as `huggingface_hub` reads them) and downloaded by `snapshot_download`, which
keeps the cache and, under `HF_HUB_OFFLINE=1`, serves from it alone. What cannot be had is one ValueError naming the
flag, the id and why (not found, gated, not readable with the token, not cached offline, the connection lost), raised
before anything is written.
"""

import os
from dataclasses import dataclass
from pathlib import Path

# A repository's configuration and processor files; the weights in one format are added to these.
CONFIG_PATTERNS = ("*.json",)
# The formats `from_pretrained` and timm read, most preferred first: only the first one a repository has is fetched.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class LocatedModel:
    """A model found: `folder` holds it; `repo_id` and `commit` say which Hub revision it is (None when local)."""

    name: str  # as the user named it
    folder: str
    repo_id: str | None = None
    commit: str | None = None

    def describe(self) -> str:
        """The name with its Hub commit, for provenance and cards: `org/name@0123abcd...` or the local path."""
        return self.name if self.repo_id is None else f"{self.repo_id}@{self.commit}"


def locate_model(
    name: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    flag: str = "model",
    files: tuple[str, ...] | None = None,
) -> LocatedModel:
    """The folder holding the model `name`: the folder itself, or the Hub repository `name` at `revision` in the
    cache (downloaded when missing: the `files` patterns, by default its JSON files and its weights in one format)."""
    if os.path.isdir(name):
        return LocatedModel(name=name, folder=name)
    if os.path.exists(name):
        raise ValueError(f"{flag} {name!r} is a file; allowed: a model folder or a Hub id (org/name)")
    return download_repository(name, revision=revision, token=token, flag=flag, files=files)


def download_repository(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    flag: str = "model",
    files: tuple[str, ...] | None = None,
) -> LocatedModel:
    """The Hub repository `repo_id` at `revision`, in the cache (see `locate_model`)."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        if files is not None or constants.HF_HUB_OFFLINE:
            # The files asked for. Offline, the cached snapshot is served as it is: whatever was downloaded with it.
            patterns = list(files or CONFIG_PATTERNS)
        else:
            info = HfApi().model_info(repo_id, revision=revision, token=token)
            listed = [sibling.rfilename for sibling in info.siblings or []]
            weights = next((p for p in WEIGHT_PATTERNS if any(f.endswith(p[1:]) for f in listed)), None)
            patterns = [*CONFIG_PATTERNS, *([weights] if weights else [])]
        folder = snapshot_download(repo_id, revision=revision, token=token, allow_patterns=patterns)
    except HFValidationError:
        raise ValueError(
            f"{flag} {repo_id} does not exist: it is neither a local folder nor a Hub id (org/name)"
        ) from None
    except Exception as error:  # huggingface_hub's and httpx's errors, each turned into one line
        problem = describe_hub_error(error, repo_id=repo_id, revision=revision, token=token)
        if problem is None:
            raise
        raise ValueError(f"{flag} {problem}") from None
    return LocatedModel(name=repo_id, folder=folder, repo_id=repo_id, commit=Path(folder).name)


def fetch_timm_pretrained(name: str, *, flag: str) -> None:
    """Check that timm's registry names pretrained weights for `NAME[.TAG]` and fetch their Hub repository into
    the cache, so that `timm.create_model(name, pretrained=True)` then loads them from there; a name or tag without
    weights, or a repository that cannot be had, is one ValueError."""
    import timm
    from timm.models import get_pretrained_cfg

    architecture, _, tag = name.partition(".")
    try:
        pretrained = get_pretrained_cfg(name)
    except RuntimeError:  # a tag the registry does not know
        pretrained = None
    if pretrained is None or not (pretrained.hf_hub_id or pretrained.url or pretrained.file):
        tags = timm.list_pretrained(f"{architecture}.*")
        raise ValueError(
            f"{flag} {name!r}: timm has no pretrained weights for "
            + (f"the tag {tag!r} of {architecture!r}" if tag else repr(architecture))
            + (f"; its tags with weights: {', '.join(tags)}" if tags else "")
        )
    if pretrained.hf_hub_id:
        download_repository(pretrained.hf_hub_id, flag=f"{flag} {name!r}: timm's")


def describe_hub_error(
    error: Exception, *, repo_id: str, revision: str | None, token: str | None, repo_type: str = "model"
) -> str | None:
    """What went wrong reading `repo_id` (a "model" or "dataset" repository) from the Hub, as the rest of one line
    after the flag; None for an error that is not the Hub's (a bug, to be raised as it is). A dataset is read as
    🤗 Datasets reads it, with the token of HF_TOKEN or the login."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    dataset = repo_type == "dataset"
    url = f"{constants.ENDPOINT}/{'datasets/' if dataset else ''}{repo_id}"
    repository = "dataset repository" if dataset else "repository"
    given = "HF_TOKEN or `hf auth login`" if dataset else "--hub_token or HF_TOKEN" if token is None else "--hub_token"
    unauthenticated = getattr(error, "response", None) is not None and error.response.status_code == 401
    if isinstance(error, GatedRepoError):
        return (
            f"{repo_id!r} is a gated {repository} "
            + ("and no token was sent" if unauthenticated else "that this token may not read")
            + f": accept its terms on the Hub ({url}), then pass a token of that account "
            + ("(HF_TOKEN or `hf auth login`)" if dataset else "(--hub_token or HF_TOKEN)")
        )
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"{repo_id!r} is neither a local folder nor a {repository} on the Hub ({constants.ENDPOINT}), or it is "
            + (
                f"private and no valid token was sent (pass one with {given})"
                if unauthenticated
                else f"private and not readable with the token from {given}"
            )
        )
    if isinstance(error, RevisionNotFoundError):
        return f"{repo_id!r} has no revision {revision!r} (--revision: a branch, tag or commit of it)"
    if isinstance(error, RemoteEntryNotFoundError):
        return f"{repo_id!r} lacks a file it lists: {str(error).splitlines()[-1]}"
    if isinstance(error, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return (
                f"{repo_id!r}{'' if revision is None else f' at revision {revision!r}'} is not in the local Hub "
                f"cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE=1 forbids downloading it; allowed: a local "
                "folder, or an id downloaded before"
            )
        return f"{repo_id!r} could not be downloaded: the Hub ({constants.ENDPOINT}) did not answer"
    if isinstance(error, HfHubHTTPError) and error.response is not None and error.response.status_code == 401:
        return f"{repo_id!r} cannot be read: the Hub ({constants.ENDPOINT}) refused the token from {given} as invalid"
    if isinstance(error, (httpx2.TransportError, HfHubHTTPError, ConnectionError, TimeoutError)):
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return (
            f"{repo_id!r} could not be downloaded from the Hub ({constants.ENDPOINT}) after huggingface_hub's "
            f"retries: {reason}"
        )
    return None
