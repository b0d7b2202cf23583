"""Checks every command runs on its paths before it reads anything: no output over an input, and
no node-local folder on a cluster of several nodes.

An output that is one of the command's inputs, lies inside an input folder or contains one would
destroy the input (`career inspect --quarantine-out x.jsonl --input x.jsonl` once left x.jsonl
empty). A local output that exists and is not a regular file or folder (`/dev/full`) would be
replaced by a rename. Both stop the command with exit 2 before anything is read or written.
"""

from __future__ import annotations

from typing import Protocol

from data_shards import storage
from data_shards.errors import StructuralError

_HOW = {"is": "is", "inside": "lies inside", "contains": "contains"}


class HasPaths(Protocol):
    def paths_read(self) -> dict[str, str | None]: ...
    def paths_written(self) -> dict[str, str | None]: ...


def refuse_unsafe_outputs(settings: HasPaths) -> None:
    """Raise StructuralError if an output overlaps an input or names a special file."""
    reads = {flag: url for flag, url in settings.paths_read().items() if url}
    writes = {flag: url for flag, url in settings.paths_written().items() if url}
    for out_flag, out_url in writes.items():
        for in_flag, in_url in reads.items():
            how = storage.overlaps(out_url, in_url)
            if how:
                raise StructuralError(
                    f"{out_flag} {_HOW[how]} {in_flag} ({storage.redact(in_url)}): writing there "
                    "would destroy the input; choose another output",
                    path=storage.redact(out_url),
                )
        if not storage.is_remote(out_url):
            storage.refuse_special_target(storage.location(out_url), out_url, folder_ok=True)


#: Paths only the command's own process reads (never a Ray task or worker on another node).
DRIVER_ONLY = frozenset({"--config"})


def refuse_node_local_paths(settings: HasPaths, nodes: int, shared_fs: bool) -> None:
    """On a Ray cluster of `nodes` > 1 nodes, refuse a local folder that Ray tasks or training
    workers read or write: a worker on another node would find nothing there, or write where no
    one else looks (a dataset split across the disks of three machines). `shared_fs`: the user
    says the folders are on a file system every node mounts."""
    if nodes <= 1 or shared_fs:
        return
    paths = {**settings.paths_read(), **settings.paths_written()}
    for flag, url in paths.items():
        if url and flag not in DRIVER_ONLY and not storage.is_remote(url):
            raise StructuralError(
                f"{flag} is a local folder, but the Ray cluster has {nodes} nodes: Ray tasks "
                "and training workers on the other nodes cannot read or write it. Give an "
                "object-store URL (s3://, gs://, ...), or add --shared-fs if the folder is on "
                "a file system every node mounts",
                path=storage.redact(url),
            )
