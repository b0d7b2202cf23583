"""Where checkpoints live: `OUT/checkpoints/step{N:07d}/`, on any URL.

DeepSpeed writes a checkpoint to a local folder; for a remote `OUT` (s3://...) that folder is a
per-node staging area uploaded after each save (by the node's local rank 0) and downloaded before
a resume. `latest.json` names the newest complete tag and `best.json` the best by validation
perplexity; both are written after the tag's files, so a half-written checkpoint is never used.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from data_shards import storage
from data_shards.errors import StructuralError


def tag_of(step: int) -> str:
    return f"step{step:07d}"


class CheckpointStore:
    def __init__(self, out_url: str, storage_options=None):
        self.url = storage.join(out_url, "checkpoints")
        self.storage_options = storage_options
        self.remote = storage.is_remote(out_url)
        if self.remote:
            digest = hashlib.sha1(self.url.encode()).hexdigest()[:12]
            self.local = str(Path(tempfile.gettempdir()) / f"career-checkpoints-{digest}")
        else:
            self.local = self.url.removeprefix("file://")
        # Nothing is created here: opening a store (to check a run before launching) writes
        # nothing; DeepSpeed, the sidecar and downloads make the folders they write into.

    # -- pointers -------------------------------------------------------------------------------
    def _read_pointer(self, name: str) -> dict | None:
        url = storage.join(self.url, name)
        if not storage.exists(url, self.storage_options):
            return None
        return json.loads(storage.read_text(url, self.storage_options))

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

    def read_sidecar(self, tag: str) -> dict:
        url = storage.join(self.url, tag, "career.json")
        if not storage.exists(url, self.storage_options):
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
        fs, root = storage.filesystem(self.url, self.storage_options)
        local_tag = Path(self.local) / tag
        for path in fs.find(f"{root.rstrip('/')}/{tag}"):
            relative = path[len(f"{root.rstrip('/')}/{tag}/") :]
            target = local_tag / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.retry(lambda p=path, t=target: fs.get_file(p, str(t)), self.url)

    def prune(self, keep_recent: int) -> None:
        """Remove old tags, keeping the `keep_recent` newest and the best."""
        fs, root = storage.filesystem(self.url, self.storage_options)
        if not fs.exists(root):
            return
        tags = sorted(
            p.rstrip("/").rsplit("/", 1)[-1]
            for p in fs.ls(root, detail=False)
            if "/step" in p or p.startswith("step")
        )
        tags = [t for t in tags if t.startswith("step")]
        best = (self.best() or {}).get("tag")
        for tag in tags[: max(len(tags) - keep_recent, 0)]:
            if tag != best:
                fs.rm(f"{root.rstrip('/')}/{tag}", recursive=True)
                if self.remote:
                    storage.remove_tree(str(Path(self.local) / tag))
