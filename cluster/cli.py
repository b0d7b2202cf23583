"""The `career` command line: parsers generated from typed settings, one handler per subcommand.

Each subcommand is a `Command` (`cluster.commands`): its settings dataclass, from which its
parser and `--help` are generated (`cluster.flags`), and a handler that takes those typed
settings. No `argparse.Namespace` travels past this module. Every local path is made absolute
here, once, before anything is launched (Ray Train workers run in another working directory).

Exit codes: 0 success, 1 unexpected failure, 2 bad usage or a structural input error (missing
file or column, inconsistent layout): the message names the file and line, and no partial output
is left behind. Our errors raised on a Ray Train worker reach the user the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from cluster import guards
from cluster.commands import COMMANDS
from cluster.settings import StorageSettings
from data_shards.errors import StructuralError
from trainer.preemption import PREEMPTED_EXIT, Preempted

EXIT_STRUCTURAL = 2
#: Errors that mean bad input, a missing file or store, or an fsspec scheme not installed.
USER_ERRORS = (StructuralError, ValueError, OSError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="career",
        description="CAREER at scale: a foundation model of job sequences. "
        "Simulate or read career data, shard it, train, fine-tune and evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_flags(sub.add_parser(name, help=command.help, description=command.long_help))
    return parser


# ----------------------------------------------------------------------------- errors
def _storage_options_of(value: Any) -> dict | None:
    """The storage options held anywhere in a settings object (to mask them in messages)."""
    if isinstance(value, StorageSettings):
        return value.storage_options
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            found = _storage_options_of(getattr(value, field.name))
            if found:
                return found
    return None


def _safe(exc: BaseException, storage_options: dict | None) -> str:
    """An error message with credentials masked and ANSI colour codes (from Ray) removed."""
    from data_shards.storage import mask_secrets

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    return mask_secrets(text, storage_options)


def _parse(argv: Sequence[str] | None) -> tuple[str, Any]:
    parser = build_parser()
    namespace, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may sit anywhere among the flags of the training commands
        if getattr(namespace, "overrides", None) is not None and all(
            "=" in t and not t.startswith("-") for t in extra
        ):
            namespace.overrides = [*namespace.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    command = COMMANDS[namespace.command]
    try:
        return namespace.command, command.settings_from(namespace)
    except (*USER_ERRORS, TypeError, KeyError) as exc:  # an unknown or mistyped override, ...
        parser.exit(EXIT_STRUCTURAL, f"career {namespace.command}: error: {_safe(exc, None)}\n")


class Terminated(BaseException):
    """SIGTERM (`career jobs stop`, a cluster taking its node back): raised where the process
    is, so that atomic writes remove their temporary files on the way out."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _stdout_closed() -> bool:
    """Whether the reader of stdout has gone (a pipe whose other end is closed); then stdout is
    pointed at /dev/null, so that the interpreter's own flush at exit does not fail again."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor, or no poll here
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return gone


def main(argv: Sequence[str] | None = None) -> int:
    name, typed = _parse(argv)
    options = _storage_options_of(typed)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        guards.refuse_unsafe_outputs(typed)
        return COMMANDS[name].handler(typed)
    except BrokenPipeError as exc:
        if not _stdout_closed():
            print(f"career {name}: error: {_safe(exc, options)}", file=sys.stderr)
            return EXIT_STRUCTURAL
        return 141  # `career ... | head`: the reader left, nothing more to say (as SIGPIPE)
    except USER_ERRORS as exc:
        print(f"career {name}: error: {_safe(exc, options)}", file=sys.stderr)
        return EXIT_STRUCTURAL
    except KeyboardInterrupt:
        print(f"career {name}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"career {name}: terminated (SIGTERM)", file=sys.stderr)
        return PREEMPTED_EXIT
    except Preempted as exc:
        print(f"career {name}: {_safe(exc, options)}", file=sys.stderr)
        return PREEMPTED_EXIT
    except Exception as exc:
        from data_shards.storage import object_store_errors

        if isinstance(exc, object_store_errors()):
            what = f"object store: {type(exc).__name__}: {_safe(exc, options)}"
            print(f"career {name}: error: {what}", file=sys.stderr)
            return EXIT_STRUCTURAL
        if os.environ.get("CAREER_DEBUG"):
            raise
        print(
            f"career {name}: unexpected {type(exc).__name__}: {_safe(exc, options)} "
            "(set CAREER_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
