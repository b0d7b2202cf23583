"""Deterministic tar files: same members in, byte-identical archive out.

Fixed mtime, uid/gid 0, empty owner names, mode 0644 and the plain USTAR format (no PAX headers,
which carry times and doubled the size of small members in webdataset's own writer). Used by
pass 2 of the sharding job (`write.py`), which is why it lives in this package.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

#: 2000-01-01T00:00:00Z: any fixed value works; zero confuses some tools.
FIXED_MTIME = 946684800


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A tar archive holding `members` (name, data) in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
