"""The JSON Schema of findings.json, shipped with opsbook so that a reader can validate a run.

`SCHEMA_VERSION` is written into every findings.json. It goes up when a field is removed,
renamed or changes its type; a field added to the document is added to the schema in the same
change (tests/test_findings_schema.py validates real runs against it).
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

SCHEMA_VERSION = 1
FINDINGS_SCHEMA = "findings.schema.json"


def findings_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of findings.json."""
    text = files(__package__).joinpath(FINDINGS_SCHEMA).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
