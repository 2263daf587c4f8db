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

import msgspec

from opsbook import yamltext
from opsbook.check import CHECK_ID
from opsbook.inventory import MAX_INVENTORY_BYTES, InventoryError, convert


class Waiver(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    check: str
    target: str | None = None
    owner: str
    reason: str
    ticket: str
    expires: dt.date

    def __post_init__(self) -> None:
        if not CHECK_ID.match(self.check):
            raise ValueError(f"check: not a check id: {self.check!r}")
        for name in ("owner", "reason", "ticket"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name}: must not be empty")

    def covers(self, check_id: str, target: str | None) -> bool:
        return self.check == check_id and self.target in (None, target)

    def expired(self, today: dt.date) -> bool:
        return today > self.expires

    def line(self) -> str:
        return f"{self.owner}, {self.ticket}, until {self.expires}: {self.reason}"


class Waivers(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    waivers: tuple[Waiver, ...] = ()

    def find(self, check_id: str, target: str | None) -> Waiver | None:
        # The most specific waiver wins: one for this target over one for every target.
        matching = [w for w in self.waivers if w.covers(check_id, target)]
        matching.sort(key=lambda w: w.target is None)
        return matching[0] if matching else None


def load_waivers(path: Path) -> Waivers:
    """Read and validate a waivers file; InventoryError (one line) when it is wrong."""
    try:
        raw = yamltext.safe_load(yamltext.read_text_file(path, MAX_INVENTORY_BYTES)) or {}
    except yamltext.NotText as exc:
        raise InventoryError(f"waivers {path}: cannot read: {exc}") from None
    except yamltext.YAMLError as exc:
        raise InventoryError(f"waivers {path}: not valid YAML: {yamltext.problem(exc)}") from None
    return convert(raw, Waivers, f"waivers {path}")
