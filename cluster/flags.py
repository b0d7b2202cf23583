"""Command-line flags generated from typed settings: one dataclass per command, declared once.

Every field of a settings dataclass is one flag, `--field-name`; its type comes from the
annotation, its default from the field, and its help from `metadata["help"]`, so `--help` never
re-types a default (the generator appends "(default: X)"). A field whose type is itself a
settings dataclass is composed: its flags join the command's, under a heading of their own, so
settings several commands share (Ray, storage, the input mapping) are declared once. Domain
dataclasses (`ShardConfig`, `PanelMapping`, `TrainConfig`) carry the same metadata and are turned
into flags directly, which is why this is a small generator on argparse rather than a library:
jsonargparse and tyro both generate CLIs from dataclasses, but would respell our boolean flags
(`--dry-run true`, `--no-dry-run`) and could not keep `key=value` overrides anywhere on the line.

Metadata keys: `help`, `metavar`, `choices`, `parse` (str -> value), `flag` (another spelling),
`parse` may also name one of `PARSERS` (domain modules cannot import this one); `path` (a local
path made absolute when parsed: Ray workers run in another working directory),
`positional`, `required`, `skip` (not a flag); on a composed field, `title` (its help heading).
`repeat`: a list field given once per value (`--model A --model B`: argparse's "append"),
required when the field has no default; its values reach the settings as they were typed (a
`NAME=URL` value is resolved by the settings themselves, so `path` is not applied to them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from data_shards.splits import check_fractions
from data_shards.storage import absolute

S = TypeVar("S")
_NOTHING = dataclasses.MISSING


def option(
    default: Any = _NOTHING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = _NOTHING,
    **metadata: Any,
) -> Any:
    """A settings field: `option(2, help="training workers", metavar="N")`."""
    meta = {"help": help, **metadata}
    if default_factory is not _NOTHING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def csv_list(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return items


def fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers like 0.9,0.05,0.05, got {text!r}"
        ) from None
    try:
        return check_fractions(parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def json_object(text: str) -> dict:
    """A JSON object, given inline or as `@FILE` (keeps credentials off the command line, where
    `ps` shows them to every user of the machine)."""
    if text.startswith("@"):
        try:
            with open(os.path.expanduser(text[1:])) as handle:
                text = handle.read()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


#: Parsers domain dataclasses name in `metadata["parse"]` (they cannot import this module).
PARSERS: dict[str, Callable[[str], Any]] = {
    "fractions": fractions,
    "csv": csv_list,
    "json": json_object,
}


def is_settings(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _strip_optional(kind: Any) -> Any:
    """`X` for `X | None`; any other annotation as it is."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _parser_for(kind: Any, meta: dict) -> Callable[[str], Any] | None:
    if "parse" in meta:
        parse = meta["parse"]
        return PARSERS[parse] if isinstance(parse, str) else parse
    origin = typing.get_origin(kind)
    if origin is tuple and typing.get_args(kind)[-1:] == (Ellipsis,):
        return csv_list
    if origin is dict or kind is dict:
        return json_object
    if kind in (int, float, str):
        return kind
    if origin is list:
        return None  # positional lists (overrides) take strings
    raise TypeError(f"no flag type for {kind!r}: give the field a metadata['parse']")


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _help(text: str, default: Any) -> str:
    shown = default is not None and default is not False and default != () and default != []
    if shown and "default" not in text:
        text += f" (default: {_default_text(default)})"
    return text.replace("%", "%%")


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not _NOTHING:
        return field.default
    if field.default_factory is not _NOTHING:
        return field.default_factory()
    return _NOTHING


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    *,
    only: Iterable[str] | None = None,
    defaults: dict[str, Any] | None = None,
    optional: bool = False,
    adjust: dict[str, dict[str, Any]] | None = None,
    root: argparse.ArgumentParser | None = None,
) -> None:
    """Add one flag per field of `settings` (composed settings recursively, each in a group).

    `only`: the fields to expose; `defaults`: defaults shown in help instead of the field's (a
    recipe's); `optional`: every flag defaults to None ("not given"), for settings layered over
    another source such as a recipe; `adjust`: per-command metadata changes by field name, e.g.
    `{"input": {"required": True}}`, `{"base": {"skip": True}}` (also applied to composed parts).
    """
    hints = typing.get_type_hints(settings)
    wanted = set(only) if only is not None else None
    adjust = adjust or {}
    root = root or (parser if isinstance(parser, argparse.ArgumentParser) else None)
    for field in dataclasses.fields(settings):
        if wanted is not None and field.name not in wanted:
            continue
        kind = _strip_optional(hints[field.name])
        if field.metadata.get("skip"):
            continue  # set by the command itself, not a flag
        if is_settings(kind):
            title = field.metadata.get("title") or (kind.__doc__ or kind.__name__).strip()
            title = title.splitlines()[0].rstrip(".")
            group = root.add_argument_group(title) if root is not None else parser
            add_flags(group, kind, adjust=adjust, root=root)
            continue
        meta = {**field.metadata, **adjust.get(field.name, {})}
        if "help" not in meta or meta.get("skip"):
            continue  # not a command-line setting (here)
        default = _field_default(field)
        shown = (defaults or {}).get(field.name, default)
        help_text = _help(meta["help"], None if shown is _NOTHING else shown)
        kwargs: dict[str, Any] = {"help": help_text}
        if meta.get("positional"):
            parser.add_argument(field.name, nargs="*", metavar=meta.get("metavar"), **kwargs)
            continue
        flag = meta.get("flag", "--" + field.name.replace("_", "-"))
        kwargs["dest"] = field.name
        if meta.get("repeat"):
            kwargs.update(action="append", metavar=meta.get("metavar"))
            if not optional and (meta.get("required") or default is _NOTHING):
                kwargs["required"] = True
            parser.add_argument(flag, **kwargs)
            continue
        if kind is bool:
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        kwargs["type"] = _parser_for(kind, meta)
        kwargs["default"] = None if optional or default is _NOTHING else default
        if meta.get("required") or (default is _NOTHING and not optional):
            kwargs["required"] = True
        for key in ("metavar", "choices"):
            if key in meta:
                kwargs[key] = meta[key]
        parser.add_argument(flag, **kwargs)


def given(namespace: argparse.Namespace, settings: type, only: Iterable[str]) -> dict[str, Any]:
    """The fields of `settings` named in `only` that were given on the command line."""
    names = {f.name for f in dataclasses.fields(settings)} & set(only)
    return {n: getattr(namespace, n) for n in names if getattr(namespace, n, None) is not None}


def build(settings: type[S], namespace: argparse.Namespace, **extra: Any) -> S:
    """The typed settings from a parsed namespace (path fields made absolute); `extra` gives
    fields that are not flags."""
    hints = typing.get_type_hints(settings)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        kind = _strip_optional(hints[field.name])
        if field.name in extra:
            values[field.name] = extra[field.name]
        elif is_settings(kind):
            values[field.name] = build(kind, namespace)
        elif field.init and getattr(namespace, field.name, None) is not None:
            value = getattr(namespace, field.name)
            if field.metadata.get("repeat"):
                value = list(value)
            elif field.metadata.get("path"):
                value = absolute(value)
            values[field.name] = value
    return settings(**values)
