"""A strict Hugging Face Hub API server on 127.0.0.1 for round-trip tests of uploads and downloads.

The unmodified `huggingface_hub` and `transformers` talk to it through `HF_ENDPOINT` (read when
`huggingface_hub` is imported) with `HF_HUB_DISABLE_XET=1`, which sends uploads through the LFS batch API. It
serves the routes those clients call (found by running them against it) and nothing else:

    POST /api/repos/create                       create a model repository (409 when it exists)
    POST /api/validate-yaml                      a README's front matter must be a YAML mapping
    POST /api/models/{repo}/branch/{branch}      create a branch (409 when it exists)
    POST /api/models/{repo}/preupload/{rev}      upload mode (regular or lfs) and the stored oid of each file
    POST /{repo}.git/info/lfs/objects/batch      LFS upload actions: one signed PUT address per new object
    PUT  /lfs-objects/{ticket}                   the object's bytes; the sha256 and size must match the batch
    POST /api/models/{repo}/commit/{rev}         NDJSON commit: header, file, lfsFile, deletedFile, deletedFolder
    GET  /api/models/{repo}[/revision/{rev}]     model info (sha, siblings, private, gated, card data)
    GET  /api/models/{repo}/tree/{rev}[/{path}]  file listing
    HEAD|GET /{repo}/resolve/{rev}/{path}        file bytes with X-Repo-Commit, ETag, X-Linked-Etag/-Size; a
                                                 Range header gets 206 and those bytes (datasets reads parquet so)
    GET  /api/datasets/..., HEAD|GET /datasets/{repo}/resolve/...   the same three for a dataset, which is all
                                                 `datasets.load_dataset("org/name")` calls

Repositories other users made are seeded with `add_repo` (a dataset as `datasets/org/name`); a gated one answers
403 GatedRepo to every user who has not accepted its terms (`granted`).

Anything else is 404, e.g. `GET /api/agent-harnesses`, which `huggingface_hub` asks for once, best effort.

It is strict so that a test cannot pass by accident: every route but the signed PUT and the three reads needs a known
token in `Authorization: Bearer ...` (401 otherwise; 403 to write with a read token or into another namespace). The
reads (info, tree, resolve) serve a public repository without a token, as the Hub does; without one, a private or
absent repository is 401 RepoNotFound and a gated one 401 GatedRepo, and a token sent must be known. Every
uploaded object is checked against its sha256 and size, unknown routes, unknown JSON fields and unknown commit
keys are refused (400/404 with the reason), and an LFS file can only be committed after its object was uploaded.
Files are kept per commit (`server.files(repo_id)`, `server.commits(repo_id)`) for assertions, and every request is
logged (`server.requests`). `fail(route, status)` makes one route answer an error, `hold(route)` holds its requests until `release()`.
`stall(route, seconds)` delays one answer; `drop(route[, method=])` makes the server go away in the middle of a request: it reads half of the body, then closes the
connection without an answer. `max_in_flight[route]` is the most requests to a route it served at once.
"""

import base64
import hashlib
import itertools
import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# Files the real Hub stores in LFS whatever their size; any file holding a NUL byte in its first 512 bytes, or
# over 10 MB, goes to LFS too.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".png", ".jpg", ".npy", ".tfevents")
LFS_THRESHOLD = 10 * 1024 * 1024
DROP = 0  # an injected "failure" that closes the connection instead of answering


def folder_files(folder: Path) -> dict[str, bytes]:
    """A saved folder as `HubServer.add_repo` takes it: each file's path in the repository, and its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]
    lfs_paths: set[str]


@dataclass
class Repo:
    repo_id: str
    private: bool
    gated: bool = False  # readable only by the users in `granted` (who accepted its terms)
    granted: set[str] = field(default_factory=set)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes


class HubError(Exception):
    """An error answer: the status, the message (JSON body and X-Error-Message) and the Hub's X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None, body=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.body = headers or {}, body or {}


class HubServer:
    """The server's state and its thread. `with HubServer(tokens) as server:` serves on `server.url`."""

    def __init__(self, tokens: dict[str, dict]):
        # token -> {"user": name, "write": bool}
        self.tokens = tokens
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.lock = threading.RLock()
        self._tickets: dict[str, tuple[str, str, int]] = {}  # signed PUT ticket -> (repo, sha256, size)
        # route -> (status to answer or DROP to close the connection, the method it applies to or None for any)
        self._failures: dict[str, list[tuple[int, str | None]]] = {}
        self._stalls: dict[str, list[float]] = {}
        self._in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self._held: set[str] = set()
        self._release = threading.Event()
        self._oids = (hashlib.sha1(f"commit {n}".encode()).hexdigest() for n in itertools.count())
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._release.set()
        self._http.shutdown()
        self._http.server_close()

    # What tests set and read.
    def fail(self, route: str, status: int, times: int = 1) -> None:
        """The next `times` requests to `route` (a name from ROUTES) answer `status`."""
        with self.lock:
            self._failures.setdefault(route, []).extend([(status, None)] * times)

    def stall(self, route: str, seconds: float, times: int = 1) -> None:
        """The next `times` requests to `route` are answered `seconds` late (a client's time-out)."""
        with self.lock:
            self._stalls.setdefault(route, []).extend([seconds] * times)

    def drop(self, route: str, times: int = 1, method: str | None = None) -> None:
        """The next `times` requests to `route` (only those of `method`, e.g. "GET", when given) are cut off
        halfway through their body, without an answer."""
        with self.lock:
            self._failures.setdefault(route, []).extend([(DROP, method)] * times)

    def dropped(self, method: str, target: str) -> bool:
        """Whether this request is one to cut off (the injected drop is used up)."""
        path = urlsplit(target).path
        for route, (route_method, pattern, _) in ROUTES.items():
            if re.fullmatch(pattern, path) and method in route_method.split("|"):
                with self.lock:
                    queue = self._failures.get(route) or []
                    if queue and queue[0][0] == DROP and queue[0][1] in (None, method):
                        queue.pop(0)
                        return True
                return False
        return False

    def clear_failures(self) -> list[tuple[str, int]]:
        """Drop the injected failures no request consumed, and return them."""
        with self.lock:
            left = [(route, status) for route, queue in self._failures.items() for status, _ in queue]
            left += [(route, f"stall {seconds:g} s") for route, stalls in self._stalls.items() for seconds in stalls]
            self._failures.clear()
            self._stalls.clear()
        return left

    def hold(self, route: str) -> None:
        """Requests to `route` wait unanswered until `release()` (or shutdown), then are served."""
        with self.lock:
            self._held.add(route)
            self._release.clear()

    def release(self) -> None:
        with self.lock:
            self._held.clear()
        self._release.set()

    def add_repo(
        self, repo_id: str, files: dict[str, bytes], *, private: bool = False, gated: bool = False, granted=()
    ) -> str:
        """A repository holding `files` in one commit on main, as another user made it; returns the commit's oid.
        A file is stored in LFS as an upload would store it. A dataset's `repo_id` is `datasets/org/name`."""
        with self.lock:
            if repo_id in self.repos:
                raise ValueError(f"{repo_id} exists")
            repo = self.repos[repo_id] = Repo(repo_id, private, gated, set(granted))
            lfs = {path for path, data in files.items() if _is_lfs(path, data[:512], len(data))}
            commit = Commit(next(self._oids), None, "initial commit", "", dict(files), lfs)
            repo.commits[commit.oid] = commit
            repo.branches["main"] = commit.oid
            return commit.oid

    def commits(self, repo_id: str, branch: str = "main") -> list[Commit]:
        """The branch's commits, oldest first."""
        with self.lock:
            repo = self.repos[repo_id]
            history, oid = [], repo.branches.get(branch)
            while oid is not None:
                history.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return history[::-1]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[repo.branches.get(revision, revision)].files)

    # Request handling.
    def handle(self, method: str, target: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        path, query = urlsplit(target).path, parse_qs(urlsplit(target).query)
        for route, (route_method, pattern, needs_auth) in ROUTES.items():
            match = re.fullmatch(pattern, path)
            if match is None or method not in route_method.split("|"):
                continue
            with self.lock:
                held = route in self._held
                queue = self._failures.get(route) or []
                # A drop waiting at the head is for another method (its own were cut off before reaching here).
                injected = queue.pop(0)[0] if queue and queue[0][0] != DROP else None
                stall = self._stalls.get(route, []) and self._stalls[route].pop(0)
            with self.lock:
                self._in_flight[route] = self._in_flight.get(route, 0) + 1
                self.max_in_flight[route] = max(self.max_in_flight.get(route, 0), self._in_flight[route])
            try:
                if held:
                    self._release.wait()
                if stall:
                    time.sleep(stall)
                user = self._authenticate(headers, anonymous=needs_auth == READ) if needs_auth else None
                if injected:
                    raise HubError(injected, f"injected failure of {route}")
                parts = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                if parts.pop("kind", "").startswith("datasets"):  # a dataset is kept under its Hub URL's name
                    parts["repo"] = f"datasets/{parts['repo']}"
                return getattr(self, f"_{route.replace('-', '_')}")(user, parts, query, headers, body)
            finally:
                with self.lock:
                    self._in_flight[route] -= 1
        raise HubError(404, f"no route for {method} {path}")

    def _authenticate(self, headers, anonymous: bool = False) -> dict | None:
        """The token's user; None for a read without a token (`anonymous`)."""
        authorization = headers.get("Authorization", "")
        if anonymous and not authorization:
            return None
        if not authorization.startswith("Bearer "):
            raise HubError(401, "Authorization header is required")
        user = self.tokens.get(authorization.removeprefix("Bearer "))
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, user: dict, repo_id: str, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        name = user["user"] if user else None
        if repo is None or (repo.private and repo_id.removeprefix("datasets/").split("/")[0] != name):
            if user is None:  # the Hub cannot tell an anonymous reader whether a private repository exists
                raise HubError(401, f"Repository Not Found: {repo_id}. Invalid username or password.", "RepoNotFound")
            raise HubError(404, f"Repository Not Found: {repo_id}", "RepoNotFound")
        if repo.gated and name not in repo.granted:
            if user is None:
                raise HubError(401, f"Access to model {repo_id} is restricted: please log in", "GatedRepo")
            raise HubError(403, f"Access to model {repo_id} is restricted: accept its conditions first", "GatedRepo")
        if write:
            _check_write(user, repo_id)
        return repo

    def _head_oid(self, repo: Repo, revision: str) -> str:
        oid = repo.branches.get(revision, revision if revision in repo.commits else None)
        if oid is None:
            raise HubError(404, f"Revision Not Found: {revision}", "RevisionNotFound")
        return oid

    def _url(self, headers) -> str:
        return f"http://{headers['Host']}"

    def _create(self, user, parts, query, headers, body):
        payload = _json(body, required={"name"}, allowed={"name", "organization", "type", "visibility", "private"})
        if payload.get("type", "model") != "model":
            raise HubError(400, "this server holds model repositories only")
        repo_id = f"{payload.get('organization') or user['user']}/{payload['name']}"
        _check_write(user, repo_id)
        with self.lock:
            if repo_id in self.repos:
                url = f"{self._url(headers)}/{repo_id}"
                raise HubError(409, "You already created this model repo", body={"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = self.repos[repo_id] = Repo(repo_id, private)
            initial = Commit(next(self._oids), None, "initial commit", "", {".gitattributes": b""}, set())
            repo.commits[initial.oid] = initial
            repo.branches["main"] = initial.oid
        return _answer({"url": f"{self._url(headers)}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, user, parts, query, headers, body):
        payload = _json(body, required={"content", "repoType"}, allowed={"content", "repoType"})
        content = payload["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        if match is not None:
            try:
                metadata = yaml.safe_load(match.group(1))
            except yaml.YAMLError as error:
                raise HubError(400, f"invalid YAML in README.md: {error}") from None
            if not isinstance(metadata, dict):
                raise HubError(400, "README.md metadata must be a YAML mapping")
        return _answer({"errors": [], "warnings": []})

    def _branch(self, user, parts, query, headers, body):
        payload = _json(body or b"{}", required=set(), allowed={"startingPoint", "emptyBranch"})
        with self.lock:
            repo = self._repo(user, parts["repo"], write=True)
            if parts["branch"] in repo.branches:
                raise HubError(409, f"Reference already exists: {parts['branch']}")
            repo.branches[parts["branch"]] = self._head_oid(repo, payload.get("startingPoint", "main"))
        return _answer({})

    def _preupload(self, user, parts, query, headers, body):
        payload = _json(body, required={"files"}, allowed={"files", "gitIgnore"})
        with self.lock:
            repo = self._repo(user, parts["repo"], write=True)
            stored = repo.commits[self._head_oid(repo, parts["revision"])]
            answer = []
            for entry in payload["files"]:
                _check_fields(entry, {"path", "sample", "size"}, {"path", "sample", "size"}, "preupload file")
                sample = base64.b64decode(entry["sample"])
                lfs = _is_lfs(entry["path"], sample, entry["size"])
                data = stored.files.get(entry["path"])
                oid = None
                if data is not None:
                    oid = hashlib.sha256(data).hexdigest() if lfs else git_blob_oid(data)
                mode = "lfs" if lfs else "regular"
                answer.append({"path": entry["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return _answer({"files": answer})

    def _lfs_batch(self, user, parts, query, headers, body):
        payload = _json(
            body,
            required={"operation", "objects", "hash_algo"},
            allowed={"operation", "transfers", "objects", "hash_algo", "ref"},
        )
        if payload["operation"] != "upload" or payload["hash_algo"] != "sha256":
            raise HubError(400, "only sha256 uploads are served")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "only the basic transfer is served")
        objects = []
        with self.lock:
            repo = self._repo(user, parts["repo"], write=True)
            for entry in payload["objects"]:
                _check_fields(entry, {"oid", "size"}, {"oid", "size"}, "LFS object")
                answer = {"oid": entry["oid"], "size": entry["size"], "authenticated": True}
                if entry["oid"] not in repo.lfs_objects:
                    ticket = secrets.token_urlsafe(16)
                    self._tickets[ticket] = (repo.repo_id, entry["oid"], entry["size"])
                    answer["actions"] = {"upload": {"href": f"{self._url(headers)}/lfs-objects/{ticket}"}}
                objects.append(answer)
        return _answer({"transfer": "basic", "objects": objects}, "application/vnd.git-lfs+json")

    def _lfs_upload(self, user, parts, query, headers, body):
        with self.lock:
            ticket = self._tickets.pop(parts["ticket"], None)
        if ticket is None:
            raise HubError(403, "unknown or used upload ticket")
        repo_id, oid, size = ticket
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise HubError(
                400, f"uploaded object does not match: sha256 {hashlib.sha256(body).hexdigest()}, size {len(body)}"
            )
        with self.lock:
            self.repos[repo_id].lfs_objects[oid] = body
        return 200, {"ETag": f'"{oid}"'}, b""

    def _commit(self, user, parts, query, headers, body):
        if headers.get("Content-Type") != "application/x-ndjson":
            raise HubError(400, "a commit is NDJSON")
        if query:
            raise HubError(400, f"unsupported commit parameters: {sorted(query)}")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with its header")
        with self.lock:
            repo = self._repo(user, parts["repo"], write=True)
            revision = parts["revision"]
            if revision not in repo.branches:
                raise HubError(404, f"Revision Not Found: {revision}", "RevisionNotFound")
            parent = repo.branches[revision]
            files, lfs_paths = dict(repo.commits[parent].files), set(repo.commits[parent].lfs_paths)
            header = {}
            for line in lines:
                _check_fields(line, {"key", "value"}, {"key", "value"}, "commit line")
                key, value = line["key"], line["value"]
                if key == "header":
                    _check_fields(value, {"summary"}, {"summary", "description", "parentCommit"}, "header")
                    header = value
                    if value.get("parentCommit") not in (None, parent):
                        raise HubError(409, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    _check_fields(value, {"content", "path", "encoding"}, {"content", "path", "encoding"}, "file")
                    if value["encoding"] != "base64":
                        raise HubError(400, f"unknown encoding {value['encoding']!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                    lfs_paths.discard(value["path"])
                elif key == "lfsFile":
                    _check_fields(value, {"path", "algo", "oid"}, {"path", "algo", "oid", "size"}, "lfsFile")
                    data = repo.lfs_objects.get(value["oid"])
                    if value["algo"] != "sha256" or data is None:
                        raise HubError(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    if "size" in value and value["size"] != len(data):
                        raise HubError(400, f"size of {value['path']} does not match its object")
                    files[value["path"]] = data
                    lfs_paths.add(value["path"])
                elif key == "deletedFile":
                    _check_fields(value, {"path"}, {"path"}, "deletedFile")
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    _check_fields(value, {"path"}, {"path"}, "deletedFolder")
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [path for path in files if path.startswith(prefix)]:
                        del files[path]
                else:
                    raise HubError(400, f"unknown commit key {key!r}")
            commit = Commit(
                next(self._oids), parent, header["summary"], header.get("description", ""), files, lfs_paths
            )
            repo.commits[commit.oid] = commit
            repo.branches[revision] = commit.oid
        url = f"{self._url(headers)}/{repo.repo_id}/commit/{commit.oid}"
        return _answer({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _model_info(self, user, parts, query, headers, body):
        with self.lock:
            repo = self._repo(user, parts["repo"])
            commit = repo.commits[self._head_oid(repo, parts.get("revision", "main"))]
            card = _card_data(commit.files.get("README.md", b""))
        info = {
            "_id": repo.repo_id.removeprefix("datasets/"),
            "id": repo.repo_id.removeprefix("datasets/"),
            "modelId": repo.repo_id.removeprefix("datasets/"),
            "author": repo.repo_id.removeprefix("datasets/").split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "disabled": False,
            "gated": "manual" if repo.gated else False,
            "downloads": 0,
            "likes": 0,
            "tags": card.get("tags", []),
            "pipeline_tag": card.get("pipeline_tag"),
            "library_name": card.get("library_name"),
            "cardData": card,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        return _answer(info)

    def _tree(self, user, parts, query, headers, body):
        with self.lock:
            repo = self._repo(user, parts["repo"])
            commit = repo.commits[self._head_oid(repo, parts["revision"])]
        prefix = parts.get("path", "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for path, data in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            if "/" in rest and not recursive:
                folder = f"{prefix}/{rest.split('/')[0]}" if prefix else rest.split("/")[0]
                if folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "oid": git_blob_oid(folder.encode()), "size": 0, "path": folder}
                    )
                continue
            entry = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
            if path in commit.lfs_paths:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        if prefix and not entries:
            raise HubError(404, f"Entry Not Found: {prefix}", "EntryNotFound")
        return _answer(entries)

    def _resolve(self, user, parts, query, headers, body):
        with self.lock:
            repo = self._repo(user, parts["repo"])
            oid = self._head_oid(repo, parts["revision"])
            commit = repo.commits[oid]
        data = commit.files.get(parts["path"])
        if data is None:
            raise HubError(404, f"Entry Not Found: {parts['path']}", "EntryNotFound", {"X-Repo-Commit": oid})
        answer = {"X-Repo-Commit": oid, "Content-Type": "application/octet-stream"}
        if parts["path"] in commit.lfs_paths:
            sha = hashlib.sha256(data).hexdigest()
            answer |= {"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))}
        else:
            answer["ETag"] = f'"{git_blob_oid(data)}"'
        byte_range = re.fullmatch(r"bytes=(\d*)-(\d*)", headers.get("Range", ""))
        if byte_range is None or not any(byte_range.groups()):
            return 200, answer, data
        first, last = byte_range.groups()  # "a-b", "a-" or the suffix "-n", as the Hub's storage serves them
        start = int(first) if first else max(len(data) - int(last), 0)
        end = min(int(last), len(data) - 1) if first and last else len(data) - 1
        if start > end:
            raise HubError(416, f"Range Not Satisfiable: {headers['Range']} of {len(data)} bytes")
        return 206, answer | {"Content-Range": f"bytes {start}-{end}/{len(data)}"}, data[start : end + 1]


REPO = r"(?P<repo>[\w.-]+/[\w.-]+?)"
READ = "read"  # a route that serves a public repository without Authorization
ROUTES = {  # name: (methods, path pattern, needs Authorization: True, False or READ)
    "create": ("POST", r"/api/repos/create", True),
    "validate-yaml": ("POST", r"/api/validate-yaml", True),
    "branch": ("POST", rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", True),
    "preupload": ("POST", rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", True),
    "lfs-batch": ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", True),
    "lfs-upload": ("PUT", r"/lfs-objects/(?P<ticket>[\w-]+)", False),  # signed address, as the Hub's S3 URLs
    "commit": ("POST", rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", True),
    "tree": ("GET", rf"/api/(?P<kind>models|datasets)/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", READ),
    "model-info": ("GET", rf"/api/(?P<kind>models|datasets)/{REPO}(?:/revision/(?P<revision>[^/]+))?", READ),
    "resolve": ("HEAD|GET", rf"/(?P<kind>datasets/)?{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", READ),
}


def _is_lfs(path: str, sample: bytes, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or ".tfevents." in path or b"\0" in sample or size > LFS_THRESHOLD


def _check_write(user: dict, repo_id: str) -> None:
    if not user["write"]:
        raise HubError(403, "You don't have the rights to write with this token (read-only)")
    if repo_id.split("/")[0] != user["user"]:
        raise HubError(403, f"You don't have the rights to create or write to {repo_id}")


def _check_fields(value, required: set, allowed: set, what: str) -> None:
    if not isinstance(value, dict):
        raise HubError(400, f"{what} must be an object")
    if not required <= value.keys() or not value.keys() <= allowed:
        raise HubError(400, f"{what}: fields {sorted(value)}, required {sorted(required)}, allowed {sorted(allowed)}")


def _json(body: bytes, required: set, allowed: set) -> dict:
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        raise HubError(400, "the body is not JSON") from None
    _check_fields(payload, required, allowed, "body")
    return payload


def _answer(payload, content_type: str = "application/json") -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": content_type}, json.dumps(payload).encode()


def _card_data(readme: bytes) -> dict:
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", readme.decode(errors="replace"), re.DOTALL)
    return yaml.safe_load(match.group(1)) if match else {}


def _handler_for(server: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            if server.dropped(self.command, self.path):
                self.rfile.read(length // 2)
                with server.lock:
                    server.requests.append((self.command, self.path, DROP))
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            body = self.rfile.read(length) if length else b""
            try:
                status, headers, payload = server.handle(self.command, self.path, self.headers, body)
            except HubError as error:
                status, payload = error.status, json.dumps({"error": error.message} | error.body).encode()
                headers = {"Content-Type": "application/json", "X-Error-Message": error.message} | error.headers
                if error.code:
                    headers["X-Error-Code"] = error.code
            with server.lock:
                server.requests.append((self.command, self.path, status))
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # a client that timed out and left
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args):  # the request log is `server.requests`
            pass

    return Handler
