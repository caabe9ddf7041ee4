"""The line-numbered INI engine under both schemas: read a file, find where each section and key
is written, and collect every error as "FILE:LINE: [SECTION] KEY: WHY".

The files are read with configparser. configparser knows no line numbers, so a small scan that
follows its grammar (see `_scan`) maps each section and key to the line it was written on. The
whole file is checked before failing, so `funnel-tw check-config` can show all problems at once.
"""

from __future__ import annotations

import configparser
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import attrs

from funnel_tw.keys import decode_key

from . import values

__all__ = [
    "MAX_FILE_SIZE",
    "ConfigError",
    "ConfigWarning",
    "IniFile",
    "Section",
    "format_error",
    "group_sections",
]

T = TypeVar("T")
D = TypeVar("D")

MAX_FILE_SIZE = 1 << 20
"""A config file larger than this is refused unread: hostile input gets bounded memory."""


class ConfigError(Exception):
    """Everything wrong with one config file; `errors` holds one "FILE:LINE: ..." line each."""

    def __init__(self, errors: str | Sequence[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


ConfigWarning = str
"""A "FILE:LINE: [SECTION] KEY: WHY" line about a file that loads but will not do what it seems
to say: `funnel-tw check-config` prints these and the daemons log them when they start."""


def format_error(file: str, line: int, section: str | None, key: str | None, why: str) -> str:
    """The one error format, "FILE:LINE: [SECTION] KEY: WHY", less the parts that do not apply."""
    where = f"{file}:{line}:"
    if section is not None:
        where += f" [{section}]" if key is None else f" [{section}] {key}"
        where += ":"
    return f"{where} {why}"


_COMMENT = ("#", ";")
_INLINE_COMMENT = ";"
_SECTION_RE = configparser.RawConfigParser.SECTCRE
_OPTION_RE = re.compile(r"(?P<option>.*?)\s*(?P<vi>=)\s*(?P<value>.*)$")
_NONSPACE = re.compile(r"\S")
_NO_DEFAULT_SECTION = "\n"  # can never be a section header, so [DEFAULT] is just unknown


def _strip_comment(line: str) -> str:
    """The part of a line configparser looks at: without full-line and inline comments."""
    if line.strip().startswith(_COMMENT):
        return ""
    index = -1
    while (index := line.find(_INLINE_COMMENT, index + 1)) != -1:
        if index == 0 or line[index - 1].isspace():
            return line[:index].strip()
    return line.strip()


@attrs.frozen
class _Layout:
    """Where each section and key is written, and what configparser silently ignores."""

    sections: dict[str, int]
    keys: dict[tuple[str, str], int]
    ignored: list[tuple[int, str, str]]


def _scan(lines: Sequence[str]) -> _Layout:
    """Line numbers of sections and keys, following configparser's `_read` step by step.

    Mirrors configparser with empty_lines_in_values=False: a blank or comment line ends a value;
    a line indented deeper than its key continues that key's value. Also notes text after a
    section header, which configparser drops without a word.
    """
    layout = _Layout({}, {}, [])
    section: str | None = None
    has_key = False
    indent = 0
    for lineno, line in enumerate(lines, start=1):
        value = _strip_comment(line)
        if not value:
            indent = sys.maxsize
            continue
        match = _NONSPACE.search(line)
        current = match.start() if match else 0
        if section is not None and has_key and current > indent:
            continue
        indent = current
        if header := _SECTION_RE.match(value):
            section = header.group("header")
            layout.sections.setdefault(section, lineno)
            has_key = False
            if value[header.end() :].strip():
                layout.ignored.append((lineno, section, value[header.end() :].strip()))
        elif section is None:
            break
        elif option := _OPTION_RE.match(value):
            layout.keys.setdefault((section, option.group("option").rstrip()), lineno)
            has_key = True
    return layout


class _Parser(configparser.ConfigParser):
    """configparser as DESIGN.md fixes it: "=" only, ";" comments after space, case kept."""

    def __init__(self) -> None:
        super().__init__(
            delimiters=("=",),
            comment_prefixes=_COMMENT,
            inline_comment_prefixes=(_INLINE_COMMENT,),
            interpolation=None,
            empty_lines_in_values=False,
            default_section=_NO_DEFAULT_SECTION,
            strict=True,
        )

    def optionxform(self, optionstr: str) -> str:
        return optionstr


class IniFile:
    """A config file read by configparser, with line numbers and the errors found so far."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.display = os.fspath(path)
        self.path = Path(os.path.abspath(path))
        self.base = self.path.parent
        self.errors: list[tuple[int, str]] = []
        self.warning_lines: list[tuple[int, ConfigWarning]] = []
        lines = self._read_lines()
        self.layout = _scan(lines)
        parser = _Parser()
        try:
            parser.read_file(lines, source=self.display)
        except configparser.DuplicateSectionError as e:
            first = self.layout.sections.get(e.section, 0)
            self.fail(e.lineno or 0, e.section, None, f"duplicate section (first at line {first})")
        except configparser.DuplicateOptionError as e:
            first = self.layout.keys.get((e.section, e.option), 0)
            self.fail(e.lineno or 0, e.section, e.option, f"duplicate key (first at line {first})")
        except configparser.MissingSectionHeaderError as e:
            self.fail(e.lineno, None, None, "a key before the first [section]")
        except configparser.ParsingError as e:
            for lineno, _ in e.errors:
                text = lines[lineno - 1].strip()
                self.error(lineno, None, None, f"cannot parse {text!r} (expected KEY = VALUE)")
            self.check()
        except configparser.Error as e:  # pragma: no cover - no other error is known to occur
            self.fail(0, None, None, e.message)
        for lineno, header, text in self.layout.ignored:
            self.error(lineno, header, None, f"unexpected {text!r} after the section header")
        self.sections = [
            Section(self, header, *_kind_name(header), dict(parser[header]))
            for header in parser.sections()
        ]

    def _read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except OSError as e:
            self.fail(0, None, None, f"cannot read: {e.strerror or e}")
        if len(data) > MAX_FILE_SIZE:
            self.fail(0, None, None, f"cannot read: larger than {MAX_FILE_SIZE} bytes")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            self.fail(data.count(b"\n", 0, e.start) + 1, None, None, "not UTF-8 text")
        # Universal newlines, as open() in text mode would do, so line numbers match editors.
        return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    def error(self, line: int, section: str | None, key: str | None, why: str) -> None:
        self.errors.append((line, format_error(self.display, line, section, key, why)))

    def warn(self, line: int, section: str | None, key: str | None, why: str) -> None:
        self.warning_lines.append((line, format_error(self.display, line, section, key, why)))

    @property
    def warnings(self) -> tuple[ConfigWarning, ...]:
        """The warnings recorded so far, in file order."""
        return tuple(text for _, text in sorted(self.warning_lines, key=lambda w: w[0]))

    def fail(self, line: int, section: str | None, key: str | None, why: str) -> NoReturn:
        """Record one last error and stop: the file cannot be read any further."""
        self.error(line, section, key, why)
        raise self._exception()

    def check(self) -> None:
        """Raise every error found so far, if any."""
        if self.errors:
            raise self._exception()

    def _exception(self) -> ConfigError:
        # In file order: errors are found section by section, and some only across sections.
        return ConfigError([text for _, text in sorted(self.errors, key=lambda e: e[0])])


@attrs.define
class Section:
    """One section of the file, with helpers that read its keys and record what is wrong."""

    file: IniFile
    header: str
    kind: str
    name: str
    values: dict[str, str]

    def line(self, key: str | None = None) -> int:
        """The line of the key, or of the header if the key is absent (where a missing key goes)."""
        if key is not None and (self.header, key) in self.file.layout.keys:
            return self.file.layout.keys[self.header, key]
        return self.file.layout.sections.get(self.header, 0)

    def error(self, key: str | None, why: str) -> None:
        self.file.error(self.line(key), self.header, key, why)

    def warn(self, key: str | None, why: str) -> None:
        self.file.warn(self.line(key), self.header, key, why)

    def path(self, value: str) -> Path:
        """A path key's value, taken from the folder of the file when relative."""
        return values.path(value, self.file.base)

    def opt(self, key: str, convert: Callable[[str], T], default: D) -> T | D:
        """The converted value of an optional key; `default` if absent or wrong (then recorded)."""
        if key not in self.values:
            return default
        try:
            return convert(self.values[key])
        except ValueError as e:
            self.error(key, str(e))
            return default

    def req(self, key: str, convert: Callable[[str], T]) -> T | None:
        """The converted value of a required key; None if absent or wrong (then recorded)."""
        if key not in self.values:
            self.error(key, "required key is missing")
            return None
        return self.opt(key, convert, None)

    def secret(self, key: str, required: bool) -> bytes | None:
        """A key given inline (KEY) or in a file only its owner can read (KEY-file), not both."""
        file_key = f"{key}-file"
        if key in self.values and file_key in self.values:
            self.error(file_key, f"use {key} or {file_key}, not both")
            return None
        if file_key in self.values:
            return self.opt(file_key, lambda v: values.read_key_file(self.path(v)), None)
        if required and key not in self.values:
            self.error(key, f"required key is missing (or give {file_key})")
            return None
        return self.opt(key, decode_key, None)

    def reject_unknown(self, known: Sequence[str]) -> None:
        for key in self.values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.error(key, f"unknown key{hint}")


def _kind_name(header: str) -> tuple[str, str]:
    kind, _, name = header.strip().partition(" ")
    return kind, name.strip()


def group_sections(
    file: IniFile,
    singles: Sequence[str],
    named: Sequence[str],
    required: str,
    own_names: Sequence[str] = (),
) -> dict[str, list[Section]]:
    """Sort sections by kind; report unknown kinds, bad or repeated names, a missing `required`.

    `singles` are kinds written once and without a name ([node]); `named` take a NAME
    ([peer NAME]) and may repeat with different names. The names of the `own_names` kinds
    ([serve HOST:PORT]) are not NAMEs: their schema checks them.
    """
    groups: dict[str, list[Section]] = {kind: [] for kind in (*singles, *named)}
    seen: dict[tuple[str, str], Section] = {}
    for section in file.sections:
        if section.kind in singles and section.name:
            section.error(None, f"unknown section ([{section.kind}] takes no name)")
            continue
        if (
            section.kind in named
            and section.kind not in own_names
            and not values.NAME.match(section.name)
        ):
            section.error(
                None, f"needs a NAME of letters, digits, '.', '_', '-': [{section.kind} NAME]"
            )
            continue
        if section.kind not in groups:
            close = difflib.get_close_matches(section.kind, groups, n=1)
            shown = f"{close[0]} NAME" if close and close[0] in named else "".join(close)
            hint = f" (did you mean [{shown}]?)" if close else ""
            section.error(None, f"unknown section{hint}")
            continue
        first = seen.setdefault((section.kind, section.name), section)
        if first is not section:
            section.error(None, f"same section as [{first.header}] (line {first.line()})")
            continue
        groups[section.kind].append(section)
    if not groups[required]:
        file.error(0, required, None, "missing section")
    return groups
