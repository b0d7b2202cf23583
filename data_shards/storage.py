"""One object-store module: every file the system reads or writes goes through fsspec here.

Local paths, `file://`, `s3://` (endpoint and credentials from the standard AWS environment
variables or `storage_options`) and any other fsspec scheme whose package is installed.
Credentials are never part of a URL we print: `redact` strips them. `s3_options` is the one place
that adds the AWS endpoint variables to s3 options and `is_remote` the one test for "not a local
path".

Retries (see `retry`): every S3 request of a filesystem made here is retried by our botocore
`needs-retry` handler (5xx, throttling, a connection lost before the response), and a whole
operation by `retry` (a body cut mid-transfer is read again from its start); both log each retry
with its count, and an outage ends, after 3.75-7.5 s of backoff, in an `ObjectStoreUnavailable`
naming the URL. botocore's and s3fs's own loops are off for these filesystems: nested in ours,
they retried silently and multiplied (one read under an outage took 25 requests and 40 s). `read_verified`
checks bytes against the sha256 a manifest recorded.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import random
import re
import stat
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
    if url.startswith(("s3://", "s3a://")):
        return _s3_filesystem_options(storage_options)
    return dict(storage_options or {})


#: `scheme://userinfo@` at the start of a URL or anywhere in a message. Userinfo is everything up
#: to the `@` when it holds a `:` (`key:secret@`, whatever the secret contains: AWS secret keys
#: often hold `/`), else a run without `/` (`user@`). A path with an `@` and no `:` before it
#: (`s3://bucket/v1@2/x`) is not userinfo.
_USER_INFO = r"://(?:[^@\s/]*:[^@\s]*|[^@\s/:]+)@"
_USER_INFO_AT_START = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*" + _USER_INFO)
#: A storage option (at any depth) whose key contains one of these is a credential.
_SECRET_WORDS = (
    "secret",
    "token",
    "password",
    "passwd",
    "authorization",
    "credential",
    "key",
    "session",
    "signature",
    "cookie",
)
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
#: Secrets shorter than this are not masked in free text (they would mask ordinary words).
_MIN_SECRET_LENGTH = 4


def filesystem(
    url: str, storage_options: StorageOptions = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path inside it. URLs carrying credentials are refused."""
    if _USER_INFO_AT_START.match(url):
        raise StructuralError(
            "credentials inside a URL are refused (they would end up in logs); use the standard "
            "AWS environment variables or --storage-options",
            path=redact(url),
        )
    fs, path = url_to_fs(url, **_options_for(url, storage_options))
    if url.startswith(("s3://", "s3a://")) and "session" in fs.storage_options:
        # s3fs's own loop (up to 5 silent attempts around a call) would multiply ours.
        # Requests are retried by our botocore handler, whole reads by `retry`.
        fs.retries = 1
    return fs, path


def is_secret_key(key: str) -> bool:
    """Whether a storage-option key names a credential (`key`, `secret`, `token`, `headers.
    Authorization`, `aws_session_token`, `credentials`, `key_id`, ...)."""
    lowered = key.lower().replace("-", "_")
    return any(word in lowered for word in _SECRET_WORDS)


def secret_values(value: Any, secret: bool = False) -> list[str]:
    """Every string in `value` (nested dicts and lists) held under a credential key: a value
    below a credential key (`{"credentials": {"a": ...}}`) is a credential too."""
    if isinstance(value, dict):
        return [
            found
            for key, item in value.items()
            for found in secret_values(item, secret or is_secret_key(str(key)))
        ]
    if isinstance(value, list | tuple):
        return [found for item in value for found in secret_values(item, secret)]
    if secret and value is not None and not isinstance(value, bool):
        return [str(value)]
    return []


def masked_options(storage_options: StorageOptions) -> dict[str, Any]:
    """A copy of `storage_options` safe to print: every credential value replaced by ***."""

    def mask(value: Any, secret: bool) -> Any:
        if isinstance(value, dict):
            return {k: mask(v, secret or is_secret_key(str(k))) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [mask(v, secret) for v in value]
        return "***" if secret and value is not None else value

    return mask(dict(storage_options or {}), False)


def mask_secrets(text: str, storage_options: StorageOptions = None) -> str:
    """`text` with every credential we know of replaced by ***: storage-option values under a
    credential key (at any depth), the AWS credential variables, and URL userinfo."""
    secrets = [os.environ[name] for name in _SECRET_ENV if os.environ.get(name)]
    secrets += secret_values(storage_options or {})
    text = redact(text)  # first: a userinfo secret is removed whole, not partly masked
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return text


def location(url: str) -> str:
    """A canonical form of `url` for comparing locations: local paths (and file:// URLs) resolved
    through symlinks; other URLs as `scheme://bucket/key` without a trailing slash."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" not in url:
        return os.path.realpath(os.path.expanduser(url))
    scheme, rest = redact(url).split("://", 1)
    return f"{scheme.lower()}://" + posixpath.normpath("/" + rest).lstrip("/")


def overlaps(a: str, b: str) -> str | None:
    """How locations `a` and `b` overlap: "is" (the same), "inside" (`a` lies inside `b`),
    "contains" (`b` lies inside `a`), or None."""
    first, second = location(a), location(b)
    if first == second:
        return "is"
    if first.startswith(second.rstrip("/") + "/"):
        return "inside"
    if second.startswith(first.rstrip("/") + "/"):
        return "contains"
    return None


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or local path with '/'."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(url, *parts)


def redact(url: str) -> str:
    """A URL (or a message holding URLs) safe to print: `user:password@` is removed, whatever
    the password contains."""
    return re.sub(_USER_INFO, "://", url)


def object_store_errors() -> tuple[type[BaseException], ...]:
    """The object-store client's own errors (an unreachable endpoint, missing credentials, access
    denied): the user's environment, not a bug, so commands report them with exit 2. botocore is
    imported only if installed (s3fs brings it)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return ()
    return (BotoCoreError, ClientError)


#: Errors that retrying cannot fix.
PERMANENT_ERRORS = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)
#: OS error numbers that retrying cannot fix either (a symlink loop, a name too long, no space).
PERMANENT_ERRNOS = frozenset(
    {errno.ELOOP, errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
)
#: Attempts per S3 request and per operation, and the first backoff (doubled each retry, with
#: jitter): 0.25-0.5 s, 0.5-1 s, 1-2 s, 2-4 s; 3.75-7.5 s in all before an outage is reported.
RETRY_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.25
#: Retries made in this process, by level ("request": one S3 request answered 5xx, throttled or
#: cut before its response; "operation": a read cut mid-body or a local I/O error).
RETRIES: collections.Counter[str] = collections.Counter()
#: S3 error codes that mean "try again" whatever their HTTP status.
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
    }
)
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})

T = TypeVar("T")


class ObjectStoreUnavailable(StructuralError, OSError):
    """The object store kept failing (5xx, throttling, connections lost) through every retry.

    A StructuralError naming the (redacted) URL, so commands end with exit 2 and one line; an
    OSError too, so code that handles I/O errors handles this one."""


def _backoff(attempt: int) -> float:
    return RETRY_BASE_DELAY * 2**attempt * (1 + random.random())


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _s3_failure(exc: BaseException) -> tuple[str, bool] | None:
    """The failed S3 request behind `exc`, if any: why ("HTTP 503 SlowDown",
    "ConnectionClosedError") and whether it was worth retrying (5xx, throttling, no response;
    not denied or no such bucket). Such requests were already retried one by one
    (`_s3_request_retry`)."""
    try:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    except ImportError:
        return None
    for cause in _chain(exc):
        if isinstance(cause, ClientError):
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = cause.response.get("Error", {}).get("Code")
            return _http_failure(status, code), _transient_status(status, code)
        if isinstance(cause, HTTPClientError | ConnectionError):
            return type(cause).__name__, True
    return None


def _transient_status(status: int | None, code: str | None) -> bool:
    return status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES


def _http_failure(status: int | None, code: str | None) -> str:
    """Like "HTTP 503 SlowDown"; "HTTP 503" when the response has no error code (HEAD)."""
    return f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")


def _body_failure(exc: BaseException) -> bool:
    """A response body cut or spoiled in transfer (reset or closed mid-body, fewer bytes than its
    Content-Length, a checksum mismatch, a read timeout): reading the object again can succeed."""
    names = {
        "ClientPayloadError",  # aiohttp: payload not completed (truncated, reset)
        "ClientConnectionError",
        "ServerDisconnectedError",
        "ResponseStreamingError",  # botocore
        "IncompleteReadError",
        "IncompleteRead",  # http.client, urllib3
        "ProtocolError",
        "FlexibleChecksumError",  # botocore: the body does not match its checksum
        "FSTimeoutError",  # fsspec
        "TimeoutError",
    }
    return any(type(cause).__name__ in names for cause in _chain(exc))


def transient(exc: BaseException) -> bool:
    """Whether retrying a whole operation can help: a body cut mid-transfer, or a local I/O
    error that is not permanent. A failed S3 request is not: it was retried already."""
    if isinstance(exc, (*PERMANENT_ERRORS, StructuralError)) or _s3_failure(exc) is not None:
        return False
    if _body_failure(exc):
        return True
    return isinstance(exc, OSError) and exc.errno not in PERMANENT_ERRNOS


def retry(call: Callable[[], T], url: str, attempts: int = RETRY_ATTEMPTS) -> T:
    """Run `call` (one whole operation on `url`), retrying it on transient errors.

    Retries are at two levels, both ours and both logged ("transient error on URL (...); retry
    n/N in s"): each S3 request is retried by `_s3_request_retry` (5xx, throttling, connection
    lost before the response), and here the whole operation: a body cut mid-transfer (the object
    is read again from its start), or a local I/O error. Exponential backoff with jitter. An
    object store still failing after that is an `ObjectStoreUnavailable` naming the URL
    (redacted); other errors (missing, denied, a local disk's own error) are raised unchanged.
    """
    for attempt in range(attempts):
        try:
            return call()
        except (*PERMANENT_ERRORS, StructuralError):
            raise
        except Exception as exc:
            failure = _s3_failure(exc)
            if failure is not None and failure[1]:
                raise ObjectStoreUnavailable(
                    f"object store unavailable: {failure[0]} after {RETRY_ATTEMPTS} attempts",
                    path=redact(url),
                ) from exc
            if not transient(exc):
                raise
            if attempt == attempts - 1:
                if not _body_failure(exc):
                    raise  # a local I/O error: its own message names the file
                raise ObjectStoreUnavailable(
                    f"object store unavailable: {type(exc).__name__} after {attempts} attempts",
                    path=redact(url),
                ) from exc
            delay = _backoff(attempt)
            RETRIES["operation"] += 1
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


def _s3_request_retry(
    response=None, attempts: int = 1, caught_exception=None, request_dict=None, operation=None, **_
) -> float | None:
    """botocore's `needs-retry` event for every S3 request of a filesystem made here: the delay
    before retrying a request that failed transiently, or None. botocore's own retry loop is off
    for these filesystems (see `_s3_filesystem_options`), so this is the one request-level
    policy: RETRY_ATTEMPTS attempts, logged like `retry`'s."""
    from botocore.exceptions import ConnectionError, HTTPClientError

    if caught_exception is not None:  # no response: refused, reset, closed, timed out
        if not isinstance(caught_exception, HTTPClientError | ConnectionError):
            return None
        why = type(caught_exception).__name__
    elif response is not None:
        status = response[0].status_code
        code = (response[1] or {}).get("Error", {}).get("Code")
        if not _transient_status(status, code):
            return None
        why = _http_failure(status, code)
    else:
        return None
    if attempts >= RETRY_ATTEMPTS:
        return None
    params = ((request_dict or {}).get("context") or {}).get("input_params") or {}
    where = "s3://" + "/".join(p for p in (params.get("Bucket"), params.get("Key")) if p)
    delay = _backoff(attempts - 1)
    RETRIES["request"] += 1
    log.warning(
        "transient error on %s (%s: %s); retry %d/%d in %.1fs",
        redact(where),
        getattr(operation, "name", "request"),
        why,
        attempts,
        RETRY_ATTEMPTS - 1,
        delay,
    )
    return delay


_SESSIONS: dict[tuple[int, str | None], Any] = {}


def _s3_session(profile: str | None):
    """One aiobotocore session per process (and profile) whose clients retry with
    `_s3_request_retry`: made after a fork, never shared with a parent's."""
    key = (os.getpid(), profile)
    if key not in _SESSIONS:
        from aiobotocore.session import AioSession

        session = AioSession(profile=profile)
        session.register("needs-retry.s3", _s3_request_retry)
        _SESSIONS[key] = session
    return _SESSIONS[key]


def _s3_filesystem_options(storage_options: StorageOptions) -> dict[str, Any]:
    """`s3_options` plus our retry policy: botocore's own retry loop off (one attempt; our
    `needs-retry` handler decides), unless the user configured botocore's retries themselves."""
    options = s3_options(storage_options)
    config = dict(options.get("config_kwargs") or {})
    if "retries" in config:
        return options
    config["retries"] = {"mode": "standard", "total_max_attempts": 1}
    options["config_kwargs"] = config
    options["session"] = _s3_session(options.get("profile"))
    return options


def exists(url: str, storage_options: StorageOptions = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return retry(lambda: fs.exists(path), url)


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    try:
        return retry(lambda: fs.cat_file(path), url)
    except FileNotFoundError:
        raise StructuralError("does not exist", path=redact(url)) from None
    except ObjectStoreUnavailable:
        raise
    except OSError as exc:
        raise StructuralError(f"cannot read: {exc}", path=redact(url)) from None


def read_verified(url: str, sha256: str, storage_options: StorageOptions = None) -> bytes:
    """The bytes of `url`, checked against the `sha256` a manifest recorded for them.

    A mismatch is read once more (a transfer spoiled on the way); a second one is a
    StructuralError naming the URL: the bytes stored are not those the manifest describes, and
    are never used.
    """
    for attempt in range(2):
        data = read_bytes(url, storage_options)
        digest = hashlib.sha256(data).hexdigest()
        if digest == sha256:
            return data
        if attempt == 0:
            RETRIES["operation"] += 1
            log.warning(
                "sha256 mismatch on %s (%d bytes read); retry 1/1 (reading it again)",
                redact(url),
                len(data),
            )
    raise StructuralError(
        f"sha256 mismatch: {len(data)} bytes read hash to {digest[:16]}..., the manifest "
        f"records {sha256[:16]}...; the object is corrupt or was replaced, not used",
        path=redact(url),
    )


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


def json_text(value: Any, *, sort_keys: bool = True, newline: bool = True, default=None) -> str:
    """The one JSON form of the files we write: indent 1, NaN refused (not valid JSON)."""
    text = json.dumps(value, indent=1, sort_keys=sort_keys, allow_nan=False, default=default)
    return text + "\n" if newline else text


def write_json(
    url: str,
    value: Any,
    storage_options: StorageOptions = None,
    *,
    sort_keys: bool = True,
    newline: bool = True,
    default=None,
) -> None:
    """`value` as JSON (`json_text`), written atomically (`write_bytes_atomic`)."""
    text = json_text(value, sort_keys=sort_keys, newline=newline, default=default)
    write_bytes_atomic(url, text.encode(), storage_options)


def refuse_special_target(path: str, url: str | None = None, folder_ok: bool = False) -> None:
    """Refuse to write over something that is not a regular file: a device (`/dev/full`,
    `/dev/sda`), a pipe, a socket or a folder. An atomic write replaces its target by a rename,
    which would turn `/dev/full` (as root) into a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StructuralError(f"cannot write: {exc.strerror}", path=redact(url or path)) from None
    if stat.S_ISDIR(mode) and not folder_ok:
        raise StructuralError(
            "is a folder, not a file: refusing to replace it", path=redact(url or path)
        )
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise StructuralError(
            "is not a regular file (a device, pipe or socket): refusing to replace it",
            path=redact(url or path),
        )


@contextlib.contextmanager
def open_atomic(url: str, storage_options: StorageOptions = None) -> Iterator[IO[bytes]]:
    """A binary file handle whose contents appear at `url` only if the block succeeds.

    Locally: a sibling temporary file renamed into place; a target that is not a regular file is
    refused, and a write error (disk full, quota) is a StructuralError naming the target, with
    the temporary file removed. Object stores: a streaming (multipart) upload, which creates the
    object only when it completes; on failure it is aborted.
    """
    fs, path = filesystem(url, storage_options)
    if _is_local(fs):
        refuse_special_target(path, url)
        parent = os.path.dirname(path)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            if parent:
                os.makedirs(parent, exist_ok=True)
            with open(tmp, "wb") as handle:
                yield handle
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno is None:
                raise
            raise StructuralError(f"cannot write: {exc.strerror}", path=redact(url)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
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
    if retry(lambda: fs.exists(path), url):
        retry(lambda: _remove(fs, path), url)


def _remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """`fs.rm(path, recursive=True)`, where a retry may find part of it gone already."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def move_tree(src: str, dst: str, storage_options: StorageOptions = None) -> None:
    """Move a finished staging folder to its final place, replacing what was there.

    Locally a rename (atomic); on object stores, which have no folders, a copy of each object
    followed by the removal of the source (each step retried: copies and removals repeat
    harmlessly).
    """
    fs, src_path = filesystem(src, storage_options)
    _, dst_path = filesystem(dst, storage_options)
    if retry(lambda: fs.exists(dst_path), dst):
        retry(lambda: _remove(fs, dst_path), dst)
    if _is_local(fs):
        os.replace(src_path, dst_path)
        return
    for path in retry(lambda: fs.find(src_path), src):
        relative = path[len(src_path.rstrip("/")) + 1 :]
        target = f"{dst_path.rstrip('/')}/{relative}"
        retry(lambda p=path, t=target: fs.copy(p, t), src)
    retry(lambda: _remove(fs, src_path), src)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols
