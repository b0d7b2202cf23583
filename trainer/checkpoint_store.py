"""Where checkpoints live: `OUT/checkpoints/step{N:07d}/`, on any URL.

DeepSpeed writes a checkpoint to a local folder; for a remote `OUT` (s3://...) that folder is a
per-node staging area uploaded after each save (by the node's local rank 0) and downloaded before
a resume. `latest.json` names the newest complete tag and `best.json` the best by validation
perplexity; both are written after the tag's files, so a half-written checkpoint is never used.

Nothing read from a file or a listing is trusted as a path: tags must look like `step0000123`,
downloaded keys must stay inside their tag, and the staging folder is a fresh private one
(`tempfile.mkdtemp`, mode 0700), never a predictable name another user could have made first.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
from pathlib import Path

from data_shards import storage
from data_shards.errors import StructuralError

TAG = re.compile(r"step\d{7}")


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

    def latest(self) -> str | None:
        pointer = self._read_pointer("latest.json")
        return pointer["tag"] if pointer else None

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
        """`career.json` (model config, dataset, metrics) and the vocabulary, beside the tag's files."""
        folder = Path(self.local) / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "career.json").write_text(
            json.dumps(payload, indent=1, sort_keys=True, default=str)
        )
        (folder / "vocab.json").write_text(vocab.to_json())

    def tags(self) -> list[str]:
        """The checkpoint tags in the run, oldest first."""
        fs, root = storage.filesystem(self.url, self.storage_options)
        if not fs.exists(root):
            return []
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        return sorted(name for name in names if TAG.fullmatch(name))

    def read_sidecar(self, tag: str) -> dict:
        url = storage.join(self.url, check_tag(tag, storage.redact(self.url)), "career.json")
        if not storage.exists(url, self.storage_options):
            tags = self.tags()
            if tag not in tags:
                raise StructuralError(
                    f"no checkpoint {tag} in this run (its checkpoints: "
                    f"{', '.join(tags) or 'none'})",
                    path=storage.redact(self.url),
                )
            raise StructuralError(
                f"checkpoint {tag} is incomplete (no career.json)", path=storage.redact(self.url)
            )
        return json.loads(storage.read_text(url, self.storage_options))

    # -- files ----------------------------------------------------------------------------------
    def upload(self, tag: str) -> None:
        """Copy a locally written tag to the remote store (node-local rank 0 only)."""
        if not self.remote:
            return
        fs, root = storage.filesystem(self.url, self.storage_options)
        local_tag = Path(self.local) / tag
        for path in sorted(local_tag.rglob("*")):
            if path.is_file():
                target = f"{root.rstrip('/')}/{tag}/{path.relative_to(local_tag).as_posix()}"
                storage.retry(lambda p=path, t=target: fs.put_file(str(p), t), self.url)

    def download(self, tag: str) -> None:
        """Fetch a remote tag into the local staging folder (node-local rank 0 only)."""
        if not self.remote:
            return
        shown = storage.redact(storage.join(self.url, check_tag(tag, storage.redact(self.url))))
        fs, root = storage.filesystem(self.url, self.storage_options)
        local_tag = Path(self.local) / tag
        prefix = f"{root.rstrip('/')}/{tag}/"
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
        """Remove old tags, keeping the `keep_recent` newest and the best."""
        fs, root = storage.filesystem(self.url, self.storage_options)
        tags = self.tags()
        best = (self.best() or {}).get("tag")
        for tag in tags[: max(len(tags) - keep_recent, 0)]:
            if tag != best:
                fs.rm(f"{root.rstrip('/')}/{tag}", recursive=True)
                if self.remote:
                    storage.remove_tree(str(Path(self.local) / tag))
