"""Where checkpoints live: `OUT/checkpoints/step{N:07d}/`, on any URL, and when one is complete.

DeepSpeed writes a checkpoint to a local folder; for a remote `OUT` (s3://...) that folder is a
per-node staging area uploaded after each save (by the node's local rank 0) and downloaded before
a resume.

**The record.** A tag is complete when its `complete.json` exists: every file of the tag (each
rank's DeepSpeed files, `career.json`, `vocab.json`) with its size and sha256, gathered from every
node and written by rank 0 after all of them are written (and uploaded), before `latest.json`
names the tag. A tag without it is a save that never finished. Before a tag is used (resume,
export) its files are checked against the record: sizes always, and the sha256 of the bytes as
they will be read (a remote tag's downloaded copy, a local tag's files). Checkpoints written
before records existed have none and are treated as incomplete: correctness over compatibility.

**Pointers.** `latest.json` names the newest complete tag and `best.json` the best by validation
perplexity; both are written after the record. `latest()` is the newest tag that may be complete
(`trainer.elastic.prepare_resume` verifies it and falls back to earlier ones, newest first);
`prune` never removes the newest complete tags, the best or the one `latest.json` names.

Nothing read from a file or a listing is trusted as a path: tags must look like `step0000123`,
downloaded keys and recorded files must stay inside their tag, and the staging folder is a fresh
private one (`tempfile.mkdtemp`, mode 0700), never a predictable name another user could have made
first.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import tempfile
from pathlib import Path

from data_shards import storage
from data_shards.errors import StructuralError

TAG = re.compile(r"step\d{7}")
#: A tag's finished-marker: its files with their sizes and sha256 (`Files`), written last.
RECORD = "complete.json"
RECORD_FORMAT = 1
SHA256 = re.compile(r"[0-9a-f]{64}")
#: {path inside the tag (posix): {"size": bytes, "sha256": hex}}
Files = dict[str, dict[str, object]]


def tag_of(step: int) -> str:
    tag = f"step{step:07d}"
    if not TAG.fullmatch(tag):
        raise ValueError(f"update {step} has no checkpoint tag (0 to 9,999,999)")
    return tag


def check_tag(tag: object, where: str) -> str:
    """`tag` if it is a checkpoint tag; a StructuralError naming `where` it came from otherwise
    (a tag becomes a path: `../../etc` from a tampered latest.json must not)."""
    if not isinstance(tag, str) or not TAG.fullmatch(tag):
        raise StructuralError(f"{tag!r} is not a checkpoint tag like step0000123", path=where)
    return tag


def inside(folder: Path, relative: str, shown: str) -> Path:
    """`folder/relative` for a key read from a listing: refused unless it is a plain relative
    path (no `..`, `.` or empty parts, so not absolute either) that stays inside `folder`."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StructuralError(
            f"refused checkpoint key {relative!r}: not a plain relative path", path=shown
        )
    target = folder.joinpath(*parts)
    if not target.resolve().is_relative_to(folder.resolve()):  # a link on the way
        raise StructuralError(f"refused checkpoint key {relative!r}: leaves its tag", path=shown)
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def local_sizes(folder: Path) -> dict[str, int]:
    """{path inside `folder`: size} of its files (the record itself left out)."""
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() != RECORD
    }


def files_of(folder: Path) -> Files:
    """Every file under `folder` with its size and sha256: what a node contributes to a record."""
    return {
        name: {"size": size, "sha256": sha256_file(folder / name)}
        for name, size in local_sizes(folder).items()
    }


def merge_files(parts: list[Files | None]) -> Files:
    """The union of the nodes' files (several nodes sharing a folder list the same files)."""
    merged: Files = {}
    for part in parts:
        for name, entry in (part or {}).items():
            merged.setdefault(name, entry)
    return dict(sorted(merged.items()))


def mismatch(recorded: Files, sizes: dict[str, int], hashes: dict[str, str] | None) -> str | None:
    """Why the files found (`sizes`, and `hashes` where computed) are not the recorded ones; None
    when they are."""
    missing = sorted(set(recorded) - set(sizes))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return f"{missing[0]}{more} missing"
    for name, entry in recorded.items():
        if sizes[name] != entry["size"]:
            return (
                f"{name} is {sizes[name]:,} bytes, its record says {entry['size']:,} (truncated?)"
            )
    unrecorded = sorted(set(sizes) - set(recorded))
    if unrecorded:
        return f"{unrecorded[0]} is not in its record"
    for name, entry in recorded.items():
        if hashes is not None and hashes.get(name) != entry["sha256"]:
            return f"{name}: its sha256 differs from its record (corrupt)"
    return None


#: What torch.save's and DeepSpeed's failed writes say (torch.save raises a RuntimeError, often
#: without the cause: "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598").
WRITE_FAILED = (
    "inline_container",
    "PytorchStreamWriter",
    "write()",
    "file write failed",
    "Parent directory",
    "cannot be opened",
    "File too large",
    "No space left",
    "Read-only file system",
    "Permission denied",
)


def write_failure(tag: str, folder: str, error: BaseException, previous: str | None) -> Exception:
    """The error to raise for a checkpoint that could not be written into local `folder`: a
    StructuralError naming it, what failed and what is left when the cause is the disk (full, a
    file-size limit, read-only, no permission); `error` itself otherwise."""
    text = str(error)
    if not (isinstance(error, OSError) or any(mark in text for mark in WRITE_FAILED)):
        return error
    if isinstance(error, OSError) and error.errno is not None:
        text = f"{os.strerror(error.errno)}: {error.filename or folder}"
    facts = []
    with contextlib.suppress(OSError):
        facts.append(f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free there")
    size_limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if size_limit != resource.RLIM_INFINITY:
        facts.append(f"file-size limit {size_limit / 1024:,.0f} KiB (ulimit -f)")
    kept = (
        f"latest.json still names {previous}, which a rerun resumes from"
        if previous
        else "no earlier checkpoint was saved"
    )
    return StructuralError(
        f"cannot write checkpoint {tag} ({text}): the disk is full, a file-size limit was "
        f"reached or the folder is not writable ({'; '.join(facts) or 'no more is known'}); "
        f"{kept}",
        path=folder,
    )


class CheckpointStore:
    def __init__(self, out_url: str, storage_options=None):
        self.url = storage.join(out_url, "checkpoints")
        self.storage_options = storage_options
        self.remote = storage.is_remote(out_url)
        self._local = None if self.remote else self.url.removeprefix("file://")
        self._made_local = False
        # Nothing is created here: opening a store (to check a run before launching) writes
        # nothing; DeepSpeed, the sidecar and downloads make the folders they write into, and a
        # remote store's staging folder is made when first used.

    @property
    def local(self) -> str:
        """The local folder of the tags: the checkpoints folder itself for a local `OUT`; for a
        remote one a private staging folder (made on first use unless `use_staging` gave one).

        A staging folder is a cache of the remote store: removed by `close`, at the latest when
        the process exits (`trainer.checkpointer` closes it when training is done, since Ray
        Train kills its workers without running exit handlers)."""
        if self._local is None:
            self._local = tempfile.mkdtemp(prefix="career-checkpoints-")
            self._made_local = True
            atexit.register(shutil.rmtree, self._local, ignore_errors=True)
        return self._local

    def use_staging(self, folder: str) -> None:
        """Stage in `folder`, the staging folder another process of this node made."""
        if self.remote:
            self._local = folder

    def close(self) -> None:
        """Remove the staging folder now if this store made it (a remote store's local copies)."""
        if self._made_local and self._local:
            shutil.rmtree(self._local, ignore_errors=True)
            self._local, self._made_local = None, False

    def _shown(self, *parts: str) -> str:
        return storage.redact(storage.join(self.url, *parts))

    def _root(self):
        fs, root = storage.filesystem(self.url, self.storage_options)
        return fs, root.rstrip("/")

    # -- pointers -------------------------------------------------------------------------------
    def _read_pointer(self, name: str) -> dict | None:
        url = storage.join(self.url, name)
        if not storage.exists(url, self.storage_options):
            return None
        shown = storage.redact(url)
        try:
            pointer = json.loads(storage.read_text(url, self.storage_options))
        except json.JSONDecodeError as error:
            raise StructuralError(f"unreadable pointer: {error}", path=shown) from None
        if not isinstance(pointer, dict):
            raise StructuralError("unreadable pointer: not a JSON object", path=shown)
        check_tag(pointer.get("tag"), shown)
        return pointer

    def pointed(self) -> str | None:
        """The tag `latest.json` names (the newest tag once found complete), if any."""
        pointer = self._read_pointer("latest.json")
        return pointer["tag"] if pointer else None

    def latest(self) -> str | None:
        """The newest tag to try resuming from, not yet verified: `latest.json`'s or a newer
        folder's (a save that may have finished its record but not the pointer); None when the
        run has no checkpoint at all. `trainer.elastic.prepare_resume` verifies it."""
        candidates = self.candidates()
        return candidates[0] if candidates else None

    def candidates(self) -> list[str]:
        """Every tag a resume may use, newest first: the folders and the one `latest.json` names
        (even if its folder is gone, so that its absence is reported)."""
        pointed = self.pointed()
        folders = self.tags()
        if pointed is None:
            # No save of this run ever finished (`latest.json` is written after a tag's record):
            # a folder without its record is a first save cut short, not progress to protect, and
            # the run starts from update 0 (`unfinished_saves` says so).
            cut_short = self._unrecorded(folders)
            folders = [t for t in folders if t not in cut_short]
        return sorted(set(folders) | ({pointed} if pointed else set()), reverse=True)

    def unfinished_saves(self) -> list[str]:
        """Tag folders without their record while no save of the run has finished (no
        `latest.json`): first saves cut short (a killed driver, a lost node)."""
        return [] if self.pointed() is not None else self._unrecorded(self.tags())

    def _unrecorded(self, tags: list[str]) -> list[str]:
        """Those of `tags` whose folder holds no record."""
        fs, root = storage.filesystem(self.url, self.storage_options)
        return [
            t
            for t in tags
            if not storage.retry(
                lambda t=t: fs.exists(f"{root.rstrip('/')}/{t}/{RECORD}"), self.url
            )
        ]

    def best(self) -> dict | None:
        return self._read_pointer("best.json")

    def set_latest(self, tag: str, step: int) -> None:
        storage.write_bytes_atomic(
            storage.join(self.url, "latest.json"),
            json.dumps({"tag": tag, "step": step}).encode(),
            self.storage_options,
        )

    def set_best(self, tag: str, step: int, valid_perplexity: float) -> None:
        payload = {"tag": tag, "step": step, "valid_perplexity": valid_perplexity}
        storage.write_bytes_atomic(
            storage.join(self.url, "best.json"), json.dumps(payload).encode(), self.storage_options
        )

    def write_sidecar(self, tag: str, payload: dict, vocab) -> None:
        """`career.json` (model config, dataset, metrics) and the vocabulary, beside the tag's
        files."""
        folder = Path(self.local) / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "career.json").write_text(
            json.dumps(payload, indent=1, sort_keys=True, default=str)
        )
        (folder / "vocab.json").write_text(vocab.to_json())

    def tags(self) -> list[str]:
        """The checkpoint tags in the run (complete or not), oldest first."""
        fs, root = self._root()
        if not storage.retry(lambda: fs.exists(root), self.url):
            return []
        listed = storage.retry(lambda: fs.ls(root, detail=False), self.url)
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in listed)
        return sorted(name for name in names if TAG.fullmatch(name))

    def read_sidecar(self, tag: str) -> dict:
        url = storage.join(self.url, check_tag(tag, storage.redact(self.url)), "career.json")
        if not storage.exists(url, self.storage_options):
            self.refuse_unknown(tag)
            raise StructuralError(
                f"checkpoint {tag} is incomplete (no career.json)", path=storage.redact(self.url)
            )
        return json.loads(storage.read_text(url, self.storage_options))

    def refuse_unknown(self, tag: str) -> None:
        """A StructuralError listing the run's tags when it has no folder `tag`."""
        tags = self.tags()
        if tag not in tags:
            raise StructuralError(
                f"no checkpoint {tag} in this run (its checkpoints: {', '.join(tags) or 'none'})",
                path=storage.redact(self.url),
            )

    # -- saving ---------------------------------------------------------------------------------
    def begin(self, tag: str, owner: bool) -> None:
        """Before tag `tag` is written (node-local rank 0; `owner`: rank 0): whatever an earlier
        attempt left of it is removed (its record first, the store's copy by the owner, this
        node's staging copy), and its local folder is made. A folder that cannot be written is a
        StructuralError naming it, raised before DeepSpeed writes anything."""
        folder = Path(self.local) / tag
        try:
            if owner:
                self.remove(tag)
            if self.remote:
                shutil.rmtree(folder, ignore_errors=True)
            if owner or self.remote:
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise self.write_failure(tag, error) from None

    def write_failure(self, tag: str, error: BaseException) -> Exception:
        """`write_failure` for this store's local folder, naming the tag a rerun resumes from."""
        try:
            previous = self.pointed()
        except (StructuralError, OSError):
            previous = None
        return write_failure(tag, self.local, error, previous)

    def remove(self, tag: str) -> None:
        """Remove tag `tag` from the store, its record first (a tag never looks complete while
        its files go)."""
        fs, root = self._root()
        record, folder = f"{root}/{tag}/{RECORD}", f"{root}/{tag}"
        # A retried delete whose first answer was lost finds nothing left: that is done too.
        with contextlib.suppress(FileNotFoundError):
            if storage.retry(lambda: fs.exists(record), self.url):
                storage.retry(lambda: fs.rm(record), self.url)
        with contextlib.suppress(FileNotFoundError):
            if storage.retry(lambda: fs.exists(folder), self.url):
                storage.retry(lambda: fs.rm(folder, recursive=True), self.url)

    def local_files(self, tag: str) -> Files:
        """This node's files of `tag` (node-local rank 0, after they are written): its part of
        the record, hashed while they are in the page cache."""
        try:
            return files_of(Path(self.local) / tag)
        except OSError as error:
            raise self.write_failure(tag, error) from None

    def write_record(self, tag: str, step: int, files: Files) -> None:
        """Mark `tag` complete (rank 0, once every node's files are written and uploaded)."""
        record = {"format": RECORD_FORMAT, "tag": tag, "step": step, "files": files}
        storage.write_bytes_atomic(
            storage.join(self.url, tag, RECORD),
            json.dumps(record, indent=1, sort_keys=True).encode(),
            self.storage_options,
        )

    def seal(self, tag: str, step: int) -> None:
        """`write_record` for a tag written by this process alone (one rank, one node)."""
        self.write_record(tag, step, self.local_files(tag))

    # -- verifying ------------------------------------------------------------------------------
    def record(self, tag: str) -> tuple[Files | None, str | None]:
        """The files the record of `tag` lists, or None and why the tag has no usable record."""
        url = storage.join(self.url, tag, RECORD)
        if not storage.exists(url, self.storage_options):
            if not storage.exists(storage.join(self.url, tag), self.storage_options):
                return None, "its folder does not exist"
            return None, f"no {RECORD}: its save never finished (or it predates records)"
        try:
            record = json.loads(storage.read_text(url, self.storage_options))
            files = record["files"]
            if record.get("tag") != tag or not isinstance(files, dict) or not files:
                raise ValueError("not the record of this tag")
            for name, entry in files.items():
                if any(part in ("", ".", "..") for part in name.split("/")):
                    raise ValueError(f"{name!r} is not a plain relative path")
                if not (
                    isinstance(entry.get("size"), int)
                    and isinstance(entry.get("sha256"), str)
                    and SHA256.fullmatch(entry["sha256"])
                ):
                    raise ValueError(f"bad entry for {name}")
        except (ValueError, KeyError, TypeError, AttributeError, StructuralError) as error:
            return None, f"unreadable {RECORD}: {error}"
        return files, None

    def listed_sizes(self, tag: str) -> dict[str, int]:
        """{path inside the tag: size} of the tag's files in the store (a listing, no reads)."""
        if not self.remote:
            return local_sizes(Path(self.local) / tag)
        fs, root = self._root()
        prefix = f"{root}/{tag}/"
        found = storage.retry(lambda: fs.find(prefix.rstrip("/"), detail=True), self.url)
        return {
            path[len(prefix) :]: int(info["size"])
            for path, info in found.items()
            if path.startswith(prefix) and path[len(prefix) :] != RECORD
        }

    def check(self, tag: str) -> str | None:
        """Why `tag` is not complete as far as a listing shows (its record, the files' sizes),
        without reading them; None when it may be. `fetch` also compares their sha256."""
        files, reason = self.record(tag)
        if reason:
            return reason
        return mismatch(files, self.listed_sizes(tag), None)

    def verify_local(self, tag: str, files: Files) -> str | None:
        """Why the local copy of `tag` is not what its record lists (sizes, then sha256)."""
        folder = Path(self.local) / tag
        try:
            sizes = local_sizes(folder)
            reason = mismatch(files, sizes, None)
            if reason:
                return reason
            return mismatch(files, sizes, {name: sha256_file(folder / name) for name in files})
        except OSError as error:  # a file that cannot be read is not a usable tag either
            return f"cannot read its files: {error}"

    def fetch(self, tag: str) -> str | None:
        """Make the local copy of `tag` ready to read and verify it against its record (node-local
        rank 0): for a remote store the downloaded bytes (downloaded again once if they differ:
        a body cut short in transit); None when it is complete, else why not."""
        files, reason = self.record(tag)
        if reason:
            return reason
        if not self.remote:
            return self.verify_local(tag, files)
        reason = mismatch(files, self.listed_sizes(tag), None)
        if reason:
            return reason
        for _ in range(2):
            self.drop_local(tag)
            self.download(tag)
            reason = self.verify_local(tag, files)
            if reason is None:
                return None
        self.drop_local(tag)
        return f"{reason} (downloaded twice)"

    def drop_local(self, tag: str) -> None:
        """Remove a remote tag's staging copy (a local store's tags are the store itself)."""
        if self.remote:
            shutil.rmtree(Path(self.local) / tag, ignore_errors=True)

    def describe_incomplete(self, problems: list[tuple[str, str]]) -> StructuralError:
        """The refusal when no tag of the run is complete: every tag and why."""
        listed = "; ".join(f"{tag}: {why}" for tag, why in problems)
        return StructuralError(
            f"no complete checkpoint to resume from ({listed}); refusing to start over from "
            "scratch: move this folder away (or choose another --out) to train from the start",
            path=storage.redact(self.url),
        )

    def check_resumable(self) -> str | None:
        """Before launching a run: the newest tag that looks complete from a listing (None when
        the run has no checkpoint), or a StructuralError when it has tags but none complete."""
        problems = []
        for tag in self.candidates():
            reason = self.check(tag)
            if reason is None:
                return tag
            problems.append((tag, reason))
        if problems:
            raise self.describe_incomplete(problems)
        return None

    # -- files ----------------------------------------------------------------------------------
    def upload(self, tag: str) -> None:
        """Copy a locally written tag to the remote store (node-local rank 0 only)."""
        if not self.remote:
            return
        fs, root = self._root()
        local_tag = Path(self.local) / tag
        for path in sorted(local_tag.rglob("*")):
            if path.is_file():
                target = f"{root}/{tag}/{path.relative_to(local_tag).as_posix()}"
                storage.retry(lambda p=path, t=target: fs.put_file(str(p), t), self.url)

    def download(self, tag: str) -> None:
        """Fetch a remote tag into the local staging folder (node-local rank 0 only)."""
        if not self.remote:
            return
        shown = storage.redact(storage.join(self.url, check_tag(tag, storage.redact(self.url))))
        fs, root = self._root()
        local_tag = Path(self.local) / tag
        prefix = f"{root}/{tag}/"
        keys = fs.find(prefix.rstrip("/"))
        for path in keys:  # every key checked before anything is written
            if not path.startswith(prefix):
                raise StructuralError(
                    f"refused checkpoint key {path!r}: outside the tag", path=shown
                )
            inside(local_tag, path[len(prefix) :], shown)
        for path in keys:
            target = inside(local_tag, path[len(prefix) :], shown)
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.retry(lambda p=path, t=target: fs.get_file(p, str(t)), self.url)

    def prune(self, keep_recent: int) -> None:
        """Remove old and unusable tags (rank 0, after a save is complete): kept are the
        `keep_recent` newest complete tags (at least the newest), the best and the one
        `latest.json` names; a tag without a record (a save that failed, a corrupt tag skipped
        on resume) goes too, since no later tag is being written while this runs."""
        fs, root = self._root()
        tags = self.tags()
        records = storage.retry(lambda: fs.glob(f"{root}/step*/{RECORD}"), self.url)
        complete = sorted(
            tag for tag in tags if any(r.rstrip("/").endswith(f"{tag}/{RECORD}") for r in records)
        )
        keep = set(complete[-max(keep_recent, 1) :])
        keep |= {(self.best() or {}).get("tag"), self.pointed()}
        for tag in tags:
            if tag not in keep:
                self.remove(tag)
                self.drop_local(tag)
