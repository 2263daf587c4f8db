"""YAML read with libyaml's C parser when PyYAML was built with it: ten times the pure-Python one.

Every YAML a run reads (the inventory, waivers, alert rules, a compose file) goes through here.
"""

from __future__ import annotations

from typing import Any

import yaml

YAMLError = yaml.YAMLError
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """The document in `text`, with only YAML's plain types (what yaml.safe_load gives)."""
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader, C or Python
