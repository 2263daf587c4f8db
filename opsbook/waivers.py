"""Waivers: a known failure accepted by a named owner, with a reason, a ticket and an expiry.

The file `waivers.yaml` sits beside the inventory (or is given with --waivers=PATH):

    waivers:
      - check: SEC-001
        target: local            # optional: every target of the check when left out
        owner: alice@example.com
        reason: legacy .env kept until the secrets move to the vault
        ticket: OPS-123
        expires: 2026-12-31      # the last day the waiver holds

A waived failure is reported as waived, with its reason; once the waiver has expired the
failure counts again, and the report says the waiver expired.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from opsbook.check import CHECK_ID
from opsbook.inventory import InventoryError, _describe


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str
    target: str | None = None
    owner: str
    reason: str
    ticket: str
    expires: dt.date

    @field_validator("check")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not CHECK_ID.match(value):
            raise ValueError(f"not a check id: {value!r}")
        return value

    @field_validator("owner", "reason", "ticket")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def covers(self, check_id: str, target: str | None) -> bool:
        return self.check == check_id and self.target in (None, target)

    def expired(self, today: dt.date) -> bool:
        return today > self.expires

    def line(self) -> str:
        return f"{self.owner}, {self.ticket}, until {self.expires}: {self.reason}"


class Waivers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    waivers: tuple[Waiver, ...] = ()

    def find(self, check_id: str, target: str | None) -> Waiver | None:
        # The most specific waiver wins: one for this target over one for every target.
        matching = [w for w in self.waivers if w.covers(check_id, target)]
        matching.sort(key=lambda w: w.target is None)
        return matching[0] if matching else None


def load_waivers(path: Path) -> Waivers:
    """Read and validate a waivers file; InventoryError (one line) when it is wrong."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise InventoryError(f"waivers {path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise InventoryError(f"waivers {path}: not valid YAML") from None
    try:
        return Waivers.model_validate(raw)
    except ValidationError as exc:
        raise InventoryError(f"waivers {path}: {_describe(exc)}") from None
