"""YAML read with libyaml's C parser when PyYAML was built with it: ten times the pure-Python one.

Every YAML a run reads (the inventory, waivers, alert rules, a compose file) goes through here,
and so does every text file a person gives opsbook (`read_text_file`): one place refuses what
would otherwise end in a traceback, a hang or a silent surprise. A duplicate key is an error
(a second `postgres:` would silently replace the first), and so is a date that does not exist.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

YAMLError = yaml.YAMLError
_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BASE):  # type: ignore[valid-type,misc]
    """The safe loader, refusing duplicate keys and impossible dates."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` (compose files use it): merged, not a key of its own
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> object:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:
            raise ConstructorError(
                None, None, f"not a valid date: {node.value} ({exc})", node.start_mark
            ) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _StrictLoader.construct_yaml_timestamp)
_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)


def safe_load(text: str) -> Any:
    """The document in `text`, with only YAML's plain types (what yaml.safe_load gives)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader, C or Python


def problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: what and where ("duplicate key 'postgres' at line 7")."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    what = getattr(exc, "problem", None) or "invalid YAML"
    return f"{what}{where}"


class NotText(ValueError):
    """A file that is not a small regular UTF-8 text file; the message says what it is."""


def read_text_file(path: Path, max_bytes: int) -> str:
    """A small regular UTF-8 text file's content, read without blocking.

    A FIFO would block the open, a device such as /dev/zero would be read until memory runs
    out, a directory or a huge file is a mistake: each is refused with NotText saying which.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise NotText(exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise NotText("a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
            raise NotText(f"{kind}, not a regular file")
        if info.st_size > max_bytes:
            raise NotText(f"{info.st_size} bytes, more than the {max_bytes} allowed")
        data = os.read(fd, max_bytes + 1)
    except OSError as exc:
        raise NotText(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise NotText(f"more than the {max_bytes} bytes allowed")
    if b"\0" in data:
        raise NotText("binary, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotText(f"not UTF-8 text (byte {exc.start})") from None
