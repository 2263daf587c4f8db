"""Reading a finished run's findings.json, for the commands that look back at a run.

A run writes its folder under a hidden name and renames it into place, so a half-written file
is not expected; but a disk can fill, a person can edit, an attacker can truncate. Whatever is
wrong with the file is one line (FindingsUnreadable), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from opsbook import yamltext

# A findings.json of a thousand checks with their evidence is a few MiB.
MAX_FINDINGS_BYTES = 64 * 1024 * 1024


class FindingsUnreadable(Exception):
    """findings.json is missing, unreadable, not JSON, or not shaped like a run's findings."""


class _Row(msgspec.Struct):
    check_id: str
    outcome: str


class _Document(msgspec.Struct):
    run: dict[str, Any]
    findings: list[_Row]


def read_findings(path: Path) -> dict[str, Any]:
    """The document of a finished run: {"run": {...}, "findings": [...], ...}."""
    try:
        text = yamltext.read_text_file(path, MAX_FINDINGS_BYTES)
    except yamltext.NotText as exc:
        raise FindingsUnreadable(f"{path}: cannot read: {exc}") from None
    try:
        document = msgspec.json.decode(text)
        msgspec.convert(document, _Document)
    except msgspec.ValidationError as exc:
        raise FindingsUnreadable(f"{path}: not a run's findings: {exc}") from None
    except msgspec.DecodeError as exc:
        raise FindingsUnreadable(f"{path}: not valid JSON (cut short?): {exc}") from None
    assert isinstance(document, dict)
    return document
