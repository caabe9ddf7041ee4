"""Declared plugin options: a handler plugin lists its keys with the node's own converters,
and the node checks a ``[serve PORT] handler = NAME`` section against that list at load.

Every error is recorded at its key's line with the core errors of the file (nothing stops at
the first one); an unknown key is an error with a "did you mean" hint, like a core key.

    from funnel_tw.plugin import options as opt

    schema = (
        opt.host_port("backend", help="where to connect", required=True),
        opt.seconds("idle-timeout", 300.0, help="close a flow idle this long"),
        opt.integer("max-clients", 100, low=1, high=10_000),
    )
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from . import values
from .ini import Section

__all__ = [
    "REQUIRED",
    "Option",
    "boolean",
    "check_options",
    "choice",
    "host_port",
    "integer",
    "path",
    "port",
    "seconds",
    "size",
    "string",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of an option that must be given."""


@attrs.frozen
class Option:
    """One declared key: its converter (value, folder of the file) -> parsed, or ValueError."""

    name: str
    convert: Callable[[str, Path], Any]
    default: Any
    help: str
    kind: str  # what it takes, for docs and listings: "yes/no", "1..100", "HOST:PORT"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _option(
    name: str, convert: Callable[[str, Path], Any], default: Any, help: str, kind: str
) -> Option:
    if not values.NAME.match(name) or name in ("funnel", "handler"):
        raise ValueError(f"{name!r} cannot be an option name")
    return Option(name, convert, default, help, kind)


def _default(default: Any, required: bool) -> Any:
    return REQUIRED if required else default


def boolean(name: str, default: bool = False, *, help: str = "") -> Option:
    return _option(name, lambda v, _: values.boolean(v), default, help, "yes/no")


def integer(
    name: str,
    default: int | None = None,
    *,
    low: int = 0,
    high: int = 2**31 - 1,
    help: str = "",
    required: bool = False,
) -> Option:
    return _option(
        name,
        lambda v, _: values.integer(v, low, high),
        _default(default, required),
        help,
        f"{low}..{high}",
    )


def seconds(
    name: str, default: float | None = None, *, help: str = "", required: bool = False
) -> Option:
    return _option(
        name, lambda v, _: values.seconds(v), _default(default, required), help, "seconds"
    )


def size(
    name: str,
    default: int | None = None,
    *,
    low: int = 0,
    high: int = 1 << 40,
    help: str = "",
    required: bool = False,
) -> Option:
    return _option(
        name,
        lambda v, _: values.size(v, low, high),
        _default(default, required),
        help,
        "bytes (k, M, G)",
    )


def port(
    name: str, default: int | None = None, *, help: str = "", required: bool = False
) -> Option:
    return _option(name, lambda v, _: values.port(v), _default(default, required), help, "port")


def host_port(
    name: str, default: str | None = None, *, help: str = "", required: bool = False
) -> Option:
    """HOST:PORT, [IPV6]:PORT or a bare PORT (127.0.0.1), parsed to (host, port)."""

    def convert(value: str, _: Path) -> tuple[str, int]:
        if value.isdigit():
            return "127.0.0.1", values.port(value)
        return values.endpoint(value)

    return _option(name, convert, _default(default, required), help, "HOST:PORT")


def path(
    name: str, default: str | None = None, *, help: str = "", required: bool = False
) -> Option:
    """A path; a relative one is taken from the folder of node.ini (a Path)."""
    return _option(name, values.path, _default(default, required), help, "path")


def choice(
    name: str, choices: Sequence[str], default: str | None = None, *, help: str = ""
) -> Option:
    required = default is None
    return _option(
        name,
        lambda v, _: values.choice(*choices)(v),
        _default(default, required),
        help,
        " | ".join(choices),
    )


def string(
    name: str,
    default: str | None = None,
    *,
    max_length: int = 1024,
    help: str = "",
    required: bool = False,
) -> Option:
    """One line of printable text, not empty, at most ``max_length`` characters."""

    def convert(value: str, _: Path) -> str:
        if not value:
            raise ValueError("must not be empty")
        if len(value) > max_length:
            raise ValueError(f"longer than {max_length} characters")
        if not value.isprintable():
            raise ValueError("must be one line of printable text")
        return value

    return _option(name, convert, _default(default, required), help, f"text (<= {max_length})")


def check_options(
    section: Section,
    plugin: str,
    schema: Sequence[Option],
    given: Mapping[str, str],
) -> dict[str, Any] | None:
    """The section's options parsed by ``schema`` with defaults filled in, or None when any
    was wrong: each error is recorded at its key's line (a missing one at the section's)."""
    known = [o.name for o in schema]
    ok = True
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            listed = ", ".join(known) or "none"
            section.error(key, f"unknown option for handler {plugin} ({hint}known: {listed})")
            ok = False
    parsed: dict[str, Any] = {}
    for option in schema:
        if option.name not in given:
            if option.required:
                section.error(option.name, f"required by handler {plugin} ({option.kind})")
                ok = False
            parsed[option.name] = option.default
            continue
        try:
            parsed[option.name] = option.convert(given[option.name], section.file.base)
        except ValueError as e:
            section.error(option.name, str(e))
            ok = False
    return parsed if ok else None
