"""One object-store module: every file the system reads or writes goes through fsspec here.

Local paths, `file://`, `s3://` (endpoint and credentials from the standard AWS environment
variables or `storage_options`) and any other fsspec scheme whose package is installed.
Credentials are never part of a URL we print: `redact` strips them. `s3_options` is the one place
that adds the AWS endpoint variables to s3 options (the loader's own s3 opener uses it too) and
`is_remote` the one test for "not a local path".
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import fsspec
from fsspec.core import url_to_fs

from data_shards.errors import StructuralError

StorageOptions = dict[str, Any] | None
log = logging.getLogger(__name__)


def is_remote(url: str) -> bool:
    """Whether `url` names an object store or other non-local filesystem (not a path, not file://)."""
    return "://" in url and not url.startswith("file://")


def absolute(url: str | None) -> str | None:
    """A local path made absolute; URLs with a scheme are returned unchanged. Processes that run
    elsewhere (Ray Train workers) do not share the caller's working directory."""
    if not url or "://" in url:  # None and "" stay "not given"
        return url
    return os.path.abspath(os.path.expanduser(url))


def s3_options(storage_options: StorageOptions = None) -> dict[str, Any]:
    """s3fs options: the given ones, plus the endpoint of the standard AWS variables if set
    (`AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`) and none was given."""
    options = dict(storage_options or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = dict(options.get("client_kwargs") or {})
    if endpoint and "endpoint_url" not in options and "endpoint_url" not in client:
        client["endpoint_url"] = endpoint
        options["client_kwargs"] = client
    return options


def _options_for(url: str, storage_options: StorageOptions) -> dict[str, Any]:
    return s3_options(storage_options) if url.startswith("s3://") else dict(storage_options or {})


_USER_INFO = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*@")
_SECRET_KEYS = ("key", "secret", "token", "password", "session")
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def filesystem(
    url: str, storage_options: StorageOptions = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path inside it. URLs carrying credentials are refused."""
    if _USER_INFO.match(url):
        raise StructuralError(
            "credentials inside a URL are refused (they would end up in logs); use the standard "
            "AWS environment variables or --storage-options",
            path=redact(url),
        )
    return url_to_fs(url, **_options_for(url, storage_options))


def mask_secrets(text: str, storage_options: StorageOptions = None) -> str:
    """`text` with every credential we know of (storage options, AWS variables) replaced by ***."""
    secrets: list[str] = [os.environ[name] for name in _SECRET_ENV if os.environ.get(name)]

    def collect(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                collect(v, str(k))
        elif isinstance(value, str) and any(word in key.lower() for word in _SECRET_KEYS):
            secrets.append(value)

    collect(storage_options or {})
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return redact(text)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or local path with '/'."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(url, *parts)


def redact(url: str) -> str:
    """A URL (or a message holding URLs) safe to print: `user:password@` is removed."""
    return re.sub(r"://[^/\s]*@", "://", url)


#: Errors that retrying cannot fix.
PERMANENT_ERRORS = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)
RETRY_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.25

T = TypeVar("T")


def retry(call: Callable[[], T], url: str, attempts: int = RETRY_ATTEMPTS) -> T:
    """Run `call`, retrying transient object-store errors (connection, timeout, throttling).

    Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s, ... The last error is re-raised; the URL
    in the warning is redacted.
    """
    for attempt in range(attempts):
        try:
            return call()
        except PERMANENT_ERRORS:
            raise
        except (OSError, ConnectionError, TimeoutError) as exc:
            if attempt == attempts - 1:
                raise
            delay = RETRY_BASE_DELAY * 2**attempt * (1 + random.random())
            log.warning(
                "transient error on %s (%s); retry %d/%d in %.1fs",
                redact(url),
                type(exc).__name__,
                attempt + 1,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def exists(url: str, storage_options: StorageOptions = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return retry(lambda: fs.exists(path), url)


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    try:
        return retry(lambda: fs.cat_file(path), url)
    except FileNotFoundError:
        raise StructuralError("file not found", path=redact(url)) from None
    except OSError as exc:
        raise StructuralError(f"cannot read: {exc}", path=redact(url)) from None


def read_text(url: str, storage_options: StorageOptions = None) -> str:
    data = read_bytes(url, storage_options)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise StructuralError("not UTF-8 text", path=redact(url), line=line) from None


def write_bytes_atomic(url: str, data: bytes, storage_options: StorageOptions = None) -> None:
    """Write `data` so that readers see either nothing or the whole file.

    Locally: write a sibling temporary file, then rename. Object stores make a single PUT atomic.
    """
    fs, path = filesystem(url, storage_options)
    if _is_local(fs):
        with open_atomic(url, storage_options) as handle:
            handle.write(data)
    else:
        retry(lambda: fs.pipe_file(path, data), url)


@contextlib.contextmanager
def open_atomic(url: str, storage_options: StorageOptions = None) -> Iterator[IO[bytes]]:
    """A binary file handle whose contents appear at `url` only if the block succeeds.

    Locally: a sibling temporary file renamed into place. Object stores: a streaming (multipart)
    upload, which creates the object only when it completes; on failure it is aborted.
    """
    fs, path = filesystem(url, storage_options)
    if _is_local(fs):
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                yield handle
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    handle = fs.open(path, "wb")
    try:
        yield handle
    except BaseException:
        if hasattr(handle, "discard"):
            handle.discard()  # aborts a multipart upload already begun
        handle.closed = True  # never complete the upload, not even when garbage-collected
        raise
    handle.close()


def remove_tree(url: str, storage_options: StorageOptions = None) -> None:
    """Remove a folder and everything under it; a missing folder is not an error."""
    fs, path = filesystem(url, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def move_tree(src: str, dst: str, storage_options: StorageOptions = None) -> None:
    """Move a finished staging folder to its final place, replacing what was there.

    Locally a rename (atomic); on object stores, which have no folders, a copy of each object
    followed by the removal of the source.
    """
    fs, src_path = filesystem(src, storage_options)
    _, dst_path = filesystem(dst, storage_options)
    if fs.exists(dst_path):
        fs.rm(dst_path, recursive=True)
    if _is_local(fs):
        os.replace(src_path, dst_path)
        return
    for path in fs.find(src_path):
        relative = path[len(src_path.rstrip("/")) + 1 :]
        fs.copy(path, f"{dst_path.rstrip('/')}/{relative}")
    fs.rm(src_path, recursive=True)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols
