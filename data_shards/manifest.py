"""`manifest.json`: written last, it is the commit marker of a dataset.

A dataset is the folder `URL/NAME/` holding `manifest.json`, `vocab.json`, `quarantine.jsonl` and
`{train,valid,test}/shard-{i:06d}.tar`. A folder without a manifest is not a dataset, and every
reader refuses it. The manifest holds no wall-clock time, so reruns give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.schema import SPLITS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
QUARANTINE = "quarantine.jsonl"
STAGING = "_staging"


def shard_path(split: str, index: int) -> str:
    return f"{split}/shard-{index:06d}.tar"


def check_shard_path(shard: ShardInfo, source: str) -> None:
    """A manifest's shard path is trusted only if it is relative and inside the dataset, under
    its split's folder: a tampered manifest must not make a reader open `/etc/passwd`,
    `../other-dataset/...` or another bucket."""
    path = str(shard.path)
    parts = path.split("/")
    if (
        shard.split not in SPLITS
        or path.startswith("/")
        or "://" in path
        or "\\" in path
        or len(parts) != 2
        or parts[0] != shard.split
        or parts[1] in ("", ".", "..")
    ):
        raise StructuralError(
            f"shard path {path!r} (split {shard.split!r}) is not a file of the dataset's "
            f"{shard.split}/ folder: refusing a manifest that points elsewhere",
            path=source,
        )


@dataclass
class ShardInfo:
    split: str
    path: str  # relative to the dataset folder
    bytes: int
    sha256: str
    people: int
    tokens: int
    blocks: int


@dataclass
class Manifest:
    name: str
    shards: list[ShardInfo]
    splits: dict[str, dict[str, Any]]  # per split: people, tokens, people_quarantined, ...
    totals: dict[str, int]
    vocab_hash: str
    parent_hash: str | None
    fields: dict[str, Any]
    input: dict[str, Any]
    config: dict[str, Any]
    code_version: str
    format_version: int = FORMAT_VERSION
    oracle_perplexity: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        payload = json.loads(text)
        if payload.get("format_version") != FORMAT_VERSION:
            raise StructuralError(
                f"unsupported manifest format {payload.get('format_version')!r}", path=source
            )
        payload["shards"] = [ShardInfo(**s) for s in payload["shards"]]
        for shard in payload["shards"]:
            check_shard_path(shard, source)
        return cls(**payload)

    def shards_of(self, split: str) -> list[ShardInfo]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return [s for s in self.shards if s.split == split]


def manifest_url(dataset_url: str) -> str:
    return storage.join(dataset_url, MANIFEST)


def load_manifest(dataset_url: str, storage_options=None) -> Manifest:
    """The manifest of a dataset; a folder without one is refused (it is not a dataset)."""
    return read_manifest(dataset_url, storage_options)[0]


def read_manifest(dataset_url: str, storage_options=None) -> tuple[Manifest, bytes]:
    """The manifest of a dataset and the bytes of `manifest.json` it was parsed from (one read:
    their sha256 names the dataset a package was trained on). A strict UTF-8 decoding
    round-trips, so the text's encoding is exactly the file's bytes."""
    url = manifest_url(dataset_url)
    if not storage.exists(url, storage_options):
        raise StructuralError(
            "no manifest.json: not a finished dataset (is the sharding job still running, or did it fail?)",
            path=storage.redact(dataset_url),
        )
    text = storage.read_text(url, storage_options)
    return Manifest.from_json(text, storage.redact(url)), text.encode("utf-8")
