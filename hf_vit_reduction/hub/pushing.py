"""Publish model folders to the 🤗 Hub: one commit per push, in the foreground or in the background of training.

    hf-vit-reduction push FOLDER --hub_model_id me/vit-grouped [--hub_private_repo] [--hub_revision BRANCH]

The token comes from `--token`, else `HF_TOKEN`, else the login cache (`hf auth login`); it is passed to
`huggingface_hub` in memory and never written anywhere. A failed push ends in one line that says what failed, and
the local folder is never changed by a push.
"""

import argparse
import fnmatch
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import get_session, validate_repo_id

from ..cli import command_parser

logger = logging.getLogger(__name__)

HUB_STRATEGIES = ("end", "every_save", "checkpoint")
# A run folder's resumable states stay local (the "checkpoint" strategy pushes the newest as last-checkpoint/);
# hidden names are temporary files of atomic writes.
IGNORE_PATTERNS = ("checkpoints/*", ".*", "*/.*")
LAST_CHECKPOINT = "last-checkpoint"
# huggingface_hub's HTTP client has no timeout, so a stalled connection would hang a push (and a training run's
# final push) forever: seconds without a byte received before a request fails.
TIMEOUT_S = 60.0
# A push that fails for a reason that may pass (a 5xx or 429 answer, a dropped connection, a time-out) is tried again
# after 2, 4, 8, ... s, at most this many times in all and while the waits add up to at most this many seconds.
PUSH_ATTEMPTS = 5
PUSH_MAX_WAIT_S = 120.0
FIRST_WAIT_S = 2.0


class HubPushError(RuntimeError):
    """A push that failed; the message is one line naming what failed and saying the local folder is complete."""


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload model with hf_vit_reduction",
    checkpoint: str | Path | None = None,
    timeout: float = TIMEOUT_S,
    attempts: int = PUSH_ATTEMPTS,
    max_wait: float = PUSH_MAX_WAIT_S,
) -> dict:
    """Push `folder` (and `checkpoint` as `last-checkpoint/`) to `repo_id` in one commit; return the outcome.

    A failure that may pass (see `_may_pass`) is retried with a doubling wait, up to `attempts` tries and `max_wait`
    seconds of waiting in all. The commit is the Hub's one atomic step: a push cut off before it, however far its
    uploads got, leaves the repository at its previous commit.

    Creates the repository (and the `revision` branch) when missing. Files are uploaded as they are, except those
    matching `IGNORE_PATTERNS`; files already on the Hub with the same content are not sent again, and files of
    an older `last-checkpoint/` that the new one lacks are deleted in the same commit. The card travels as the
    folder's README.md (`ModelCard.push_to_hub` would validate it against the public Hub's address, whatever
    HF_ENDPOINT says). Raises `HubPushError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HubPushError(f"{folder} is not a folder; nothing was pushed")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubPushError(f"repo_id={repo_id!r} is not valid: {error}") from None
    if token is None and get_token() is None:
        raise HubPushError(
            f"no Hub token to push {folder} to {repo_id}: pass --hub_token, set HF_TOKEN or run `hf auth login`"
        )
    api = HfApi(token=token)
    get_session().timeout = timeout
    waited, wait, attempt = 0.0, FIRST_WAIT_S, 1
    while True:
        stage = "creating the repository"
        try:
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                stage = f"creating the branch {revision!r}"
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            stage = "listing the repository"
            operations = _upload_operations(folder, checkpoint, api, repo_id, revision)
            stage = f"uploading {len(operations)} files"
            commit = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
            break
        except (HfHubHTTPError, httpx2.HTTPError, OfflineModeIsEnabled, OSError, ValueError, RuntimeError) as error:
            reason = _reason(error, repo_id, timeout)
            if _may_pass(error) and attempt < attempts and waited + wait <= max_wait:
                logger.warning(
                    "%s", _one_line(f"push to {repo_id} failed ({reason}); attempt {attempt + 1} in {wait:g} s", token)
                )
                time.sleep(wait)
                waited, wait, attempt = waited + wait, 2 * wait, attempt + 1
                continue
            tries = f" (attempt {attempt} of at most {attempts}, after {waited:g} s of waiting)" if attempt > 1 else ""
            again = f"hf-vit-reduction push {folder} --hub_model_id {repo_id}"
            again += f" --hub_revision {revision}" if revision is not None else ""
            again += " --hub_private_repo" if private else ""
            raise HubPushError(
                _one_line(
                    f"pushing {folder} to {repo_id} failed while {stage}: {reason}{tries}. The local folder {folder} "
                    f"is complete and unchanged; push it again with `{again}`",
                    token,
                )
            ) from None
    return {
        "repo_id": repo_id,
        "url": str(repo_url),
        "revision": revision or constants.DEFAULT_REVISION,
        "commit": commit.oid,
        "commit_url": commit.commit_url,
    }


def _upload_operations(folder: Path, checkpoint, api: HfApi, repo_id: str, revision: str | None) -> list:
    operations = [CommitOperationAdd(name, path) for name, path in _files(folder, IGNORE_PATTERNS)]
    if checkpoint is not None:
        added = {f"{LAST_CHECKPOINT}/{name}": path for name, path in _files(Path(checkpoint), ())}
        operations += [CommitOperationAdd(name, path) for name, path in added.items()]
        stale = [
            name
            for name in api.list_repo_files(repo_id, revision=revision)
            if name.startswith(f"{LAST_CHECKPOINT}/") and name not in added
        ]
        operations += [CommitOperationDelete(name) for name in stale]
    return operations


def _files(folder: Path, ignore_patterns) -> list[tuple[str, str]]:
    files = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not any(fnmatch.fnmatch(name, pattern) for pattern in ignore_patterns):
            files.append((name, str(path)))
    return files


def _cause(error: Exception) -> Exception:
    cause = error
    while cause.__cause__ is not None and not isinstance(cause, (HfHubHTTPError, httpx2.HTTPError)):
        cause = cause.__cause__  # huggingface_hub wraps a failed LFS upload in a RuntimeError
    return cause


def _may_pass(error: Exception) -> bool:
    """A server error, too many requests, a dropped or refused connection, or a time-out: worth another try."""
    cause = _cause(error)
    if isinstance(cause, HfHubHTTPError) and cause.response is not None:
        return cause.response.status_code >= 500 or cause.response.status_code == 429
    return isinstance(cause, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError))


def _reason(error: Exception, repo_id: str, timeout: float) -> str:
    """What went wrong, in words: the HTTP status and the Hub's message, or the network failure."""
    cause = _cause(error)
    if isinstance(cause, HfHubHTTPError) and cause.response is not None:
        status = cause.response.status_code
        said = f"{status}: {cause.server_message or cause.response.reason_phrase}"
        if status >= 500:
            return f"the Hub had a server error ({said}); try again later"
        return {
            401: f"the Hub refused the token ({said}); pass a valid token, set HF_TOKEN or run `hf auth login`",
            403: f"the token may not write to {repo_id} ({said})",
            404: f"{repo_id} or its revision was not found ({said})",
            409: f"a conflicting change reached {repo_id} first ({said})",
        }.get(status, f"the Hub answered {said}")
    if isinstance(cause, httpx2.TimeoutException):
        return f"no answer from {constants.ENDPOINT} within {timeout:g} s"
    if isinstance(cause, httpx2.ConnectError):
        return f"could not connect to {constants.ENDPOINT} ({cause})"
    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set"
    return f"{type(cause).__name__}: {cause}"


def _one_line(text: str, token: str | None) -> str:
    text = " ".join(text.split())
    for secret in {token, get_token()} - {None, ""}:
        text = text.replace(secret, "***")
    return text


class HubPusher:
    """Pushes a training run's saves to one repository without making the training loop wait.

    `strategy` takes 🤗 Transformers' `--hub_strategy` names: "end" pushes only in `finish`; "every_save" pushes
    the run folder at every `on_save` in a background thread; "checkpoint" also pushes the newest checkpoint as
    `last-checkpoint/`. Creating a pusher creates the repository, so a bad token or a forbidden namespace fails
    (`HubPushError`) before training starts. Only the main process should hold one.
    """

    def __init__(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool = False,
        strategy: str = "every_save",
        revision: str | None = None,
        timeout: float = TIMEOUT_S,
        attempts: int = PUSH_ATTEMPTS,
        max_wait: float = PUSH_MAX_WAIT_S,
    ):
        if strategy not in HUB_STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not valid; allowed: {', '.join(HUB_STRATEGIES)}")
        self.repo_id, self.strategy = repo_id, strategy
        self._push = {
            "token": token,
            "private": private,
            "revision": revision,
            "timeout": timeout,
            "attempts": attempts,
            "max_wait": max_wait,
        }
        self._lock = threading.Lock()
        self._pending: tuple[Path, Path, bool, str] | None = None  # (folder, snapshot, with checkpoint, message)
        self._worker: threading.Thread | None = None
        self.pushed: list[dict] = []  # outcomes of the background pushes
        self.failures: list[str] = []  # one line per failed background push
        if token is None and get_token() is None:
            raise HubPushError(
                f"no Hub token to push to {repo_id}: pass --hub_token, set HF_TOKEN or run `hf auth login`"
            )
        api = HfApi(token=token)
        get_session().timeout = timeout
        try:
            self.url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        except (HfHubHTTPError, httpx2.HTTPError, OfflineModeIsEnabled) as error:
            reason = _reason(error, repo_id, timeout)
            raise HubPushError(_one_line(f"creating the Hub repository {repo_id} failed: {reason}", token)) from None

    def on_save(
        self, folder: str | Path, checkpoint: str | Path | None = None, message: str = "Training save"
    ) -> None:
        """Snapshot `folder` (and `checkpoint` with the "checkpoint" strategy) and push it in the background.

        Returns once the files are copied aside, so later writes into the folder cannot change what is pushed. A
        save that comes while a push is running waits for it and replaces any save still waiting, so the newest
        save is always pushed. A failed push is logged and retried by the next one, which carries every file.
        """
        if self.strategy == "end":
            return
        with_checkpoint = self.strategy == "checkpoint" and checkpoint is not None
        snapshot = Path(tempfile.mkdtemp(prefix="hf-vit-reduction-push-"))
        try:
            shutil.copytree(folder, snapshot / "run", ignore=_ignore_for_copy)
            if with_checkpoint:
                # A finished checkpoint is never rewritten, so hard links are a faithful snapshot.
                shutil.copytree(checkpoint, snapshot / LAST_CHECKPOINT, copy_function=_link_or_copy)
        except OSError as error:  # e.g. a full disk: this save is not pushed, training goes on
            shutil.rmtree(snapshot, ignore_errors=True)
            self.failures.append(f"copying {folder} aside to push it failed: {error}")
            logger.warning("background push skipped (the next save retries it): %s", self.failures[-1])
            return
        with self._lock:
            if self._pending is not None:
                shutil.rmtree(self._pending[1], ignore_errors=True)
            self._pending = (Path(folder), snapshot, with_checkpoint, message)
            if self._worker is None:
                self._worker = threading.Thread(target=self._drain, name="hub-push", daemon=True)
                self._worker.start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._worker = None
                    return
            folder, snapshot, with_checkpoint, message = job
            checkpoint = snapshot / LAST_CHECKPOINT if with_checkpoint else None
            try:
                self.pushed.append(
                    push_to_hub(
                        snapshot / "run", self.repo_id, **self._push, commit_message=message, checkpoint=checkpoint
                    )
                )
            except Exception as error:  # noqa: BLE001 (a background push must never end the training run)
                line = str(error) if isinstance(error, HubPushError) else f"{type(error).__name__}: {error}"
                self.failures.append(line.replace(str(snapshot / "run"), str(folder)))
                logger.warning("background push failed (the next save retries it): %s", self.failures[-1])
            finally:
                shutil.rmtree(snapshot, ignore_errors=True)

    def wait(self) -> None:
        """Block until no background push is running or waiting."""
        while True:
            with self._lock:
                worker = self._worker
            if worker is None:
                return
            worker.join()

    def finish(self, folder: str | Path, message: str = "End of training") -> dict:
        """Wait for the background pushes, push the final `folder` and return the outcome for results.json.

        Never raises for a failed push: the outcome's `error` holds the one-line reason (`pushed` is False).
        """
        self.wait()
        outcome = {"repo_id": self.repo_id, "strategy": self.strategy, "url": self.url}
        try:
            outcome |= push_to_hub(folder, self.repo_id, **self._push, commit_message=message) | {"pushed": True}
        except HubPushError as error:
            outcome |= {"pushed": False, "error": str(error)}
        outcome["background_pushes"] = len(self.pushed)
        outcome["background_failures"] = list(self.failures)
        return outcome


def _ignore_for_copy(directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name.startswith(".") or name == "checkpoints"]


def _link_or_copy(source: str, destination: str) -> None:
    try:
        Path(destination).hardlink_to(source)
    except OSError:
        shutil.copy2(source, destination)


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """The training script's Hub flags, with 🤗 Transformers' `Trainer` names."""
    parser.add_argument("--push_to_hub", action="store_true", help="push the model and its card to the Hub")
    parser.add_argument("--hub_model_id", default=None, help="the repository, e.g. your-name/vit-grouped")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--hub_strategy",
        choices=HUB_STRATEGIES,
        default="every_save",
        help="end: push once at the end; every_save: also at every save, in the background; "
        "checkpoint: also the newest checkpoint as last-checkpoint/",
    )
    parser.add_argument("--hub_revision", default=None, help="branch to push to (created when missing)")
    parser.add_argument(
        "--hub_token",
        default=None,
        help="to push, and to read private or gated Hub ids; else HF_TOKEN or the login cache; never written anywhere",
    )
    _add_retry_arguments(parser, attempts="--hub_push_attempts", max_wait="--hub_push_max_wait")


def _add_retry_arguments(parser, *, attempts: str, max_wait: str) -> None:
    parser.add_argument(
        attempts,
        type=int,
        default=PUSH_ATTEMPTS,
        help="tries of a push that fails with a 5xx, a dropped connection or a time-out (1: no retry)",
    )
    parser.add_argument(
        max_wait,
        type=float,
        default=PUSH_MAX_WAIT_S,
        help=f"seconds of waiting between those tries, in all (waits double from {FIRST_WAIT_S:g} s)",
    )


def _retry_problem(attempts: int, max_wait: float, *, names: tuple[str, str]) -> str | None:
    if attempts < 1:
        return f"{names[0]}={attempts!r} is not valid; allowed: an integer >= 1"
    if max_wait < 0:
        return f"{names[1]}={max_wait!r} is not valid; allowed: a number of seconds >= 0"
    return None


def check_hub_arguments(args: argparse.Namespace) -> str | None:
    """The one-line problem with the Hub flags (for `parser.error`), or None; checked before any training."""
    if not args.push_to_hub:
        return None
    names = ("--hub_push_attempts", "--hub_push_max_wait")
    if problem := _retry_problem(args.hub_push_attempts, args.hub_push_max_wait, names=names):
        return problem
    if not args.hub_model_id:
        return "--push_to_hub needs --hub_model_id (e.g. your-name/vit-grouped)"
    try:
        validate_repo_id(args.hub_model_id)
    except HFValidationError:
        return (
            f"--hub_model_id={args.hub_model_id!r} is not valid; allowed: 'name' or 'namespace/name' of letters, "
            "digits, '-', '_' and '.' (at most 96 characters)"
        )
    if args.hub_token is None and get_token() is None:
        return "--push_to_hub needs a token: pass --hub_token, set HF_TOKEN or run `hf auth login`"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("push", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a model folder (a finished run, a converted model)")
    parser.add_argument("--hub_model_id", required=True, help="the repository, e.g. your-name/vit-grouped")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repository as private")
    parser.add_argument("--hub_revision", default=None, help="branch to push to (created when missing)")
    parser.add_argument("--commit_message", default="Upload model with hf_vit_reduction")
    parser.add_argument("--hub_token", default=None, help="else HF_TOKEN or the login cache")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds without an answer before failing")
    _add_retry_arguments(parser, attempts="--hub_push_attempts", max_wait="--hub_push_max_wait")
    args = parser.parse_args(argv)
    if problem := _retry_problem(
        args.hub_push_attempts, args.hub_push_max_wait, names=("--hub_push_attempts", "--hub_push_max_wait")
    ):
        parser.error(problem)
    try:
        outcome = push_to_hub(
            args.folder,
            args.hub_model_id,
            token=args.hub_token,
            private=args.hub_private_repo,
            revision=args.hub_revision,
            commit_message=args.commit_message,
            timeout=args.timeout,
            attempts=args.hub_push_attempts,
            max_wait=args.hub_push_max_wait,
        )
    except HubPushError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"pushed {args.folder} to {outcome['url']} (commit {outcome['commit']})")
