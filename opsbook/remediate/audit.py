"""The deployment's audit log of remediations: written ahead, chained with a keyed MAC, and
anchored where the writer of the reports cannot reach.

- Written ahead: an `intent` entry before a fix acts, an `outcome` entry after (naming its
  intent), so that a run killed in the middle leaves the intent.
- Chained: each entry carries the MAC of the one before (`prev`) and its own (`mac`,
  HMAC-SHA256 over its canonical JSON under the deployment's key). Editing, deleting or
  reordering an entry breaks the chain; without the key, no entry can be forged.
- Anchored: after each append, the head (entry count and newest MAC) is exported as a metric
  (node-exporter's textfile collector, a Pushgateway), and `verify` compares the log with it,
  which catches deleted newest entries and a chain rewritten as a whole. Before appending,
  the writer compares the log with the anchor too: a log that lost entries gets a `gap` entry
  saying so, instead of being quietly continued.
- A torn last line (a write cut short: a full disk, a crash) is kept as it is; the next writer
  appends a `torn` entry after it, and `verify` reports it.

What this does not protect against is in docs/remediation.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsbook.pushgateway import Gateway
from opsbook.report_files import FILE_MODE

GENESIS = "0" * 64
# What a command exits with when what it did is not in the audit log: the code of a checks run
# whose audit trail has a gap (opsbook.plugin.outcomes.EXIT_AUDIT_TRAIL_INCOMPLETE).
EXIT_NOT_AUDITED = 11
KEY_MODE = 0o600
KEY_BYTES = 32
MAX_KEY_BYTES = 4096
METRIC = "opsbook_audit_log_entries"
PUSH_JOB = "opsbook_audit"


class AuditKeyError(Exception):
    """The audit key cannot be read or made: one line naming the file."""


def _canonical(entry: dict[str, Any]) -> bytes:
    body = {k: v for k, v in entry.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def mac_of(key: bytes, entry: dict[str, Any]) -> str:
    """The entry's MAC: HMAC-SHA256 under the deployment's key of everything but the MAC (the
    previous entry's MAC, `prev`, included: that is the chain)."""
    return hmac.new(key, _canonical(entry), hashlib.sha256).hexdigest()


def load_key(path: Path, *, create: bool) -> bytes:
    """The key in `path`; with `create`, a new random one is written there first if there is
    none (mode 0600, the runner's only). Two runs creating it at once agree on one key: it is
    written aside and linked into place, which fails for the second."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
            try:
                _write_all(descriptor, (secrets.token_hex(KEY_BYTES) + "\n").encode())
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink(missing_ok=True)
    try:
        with path.open("rb") as stream:
            text = stream.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise AuditKeyError(f"audit key {path}: cannot read: {exc.strerror or exc}") from None
    key = text.strip()
    if not key or len(text) > MAX_KEY_BYTES:
        raise AuditKeyError(f"audit key {path}: empty, or not a key file (over 4 KiB)")
    return key


@dataclass(frozen=True)
class Head:
    """The newest entry of the chain: how many there are, and its MAC."""

    count: int
    mac: str

    def to_dict(self) -> dict[str, Any]:
        # `hash` is findings.json's name for it (run.audit_head), kept for readers of old runs.
        return {"count": self.count, "hash": self.mac}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Head:
        return cls(int(raw["count"]), str(raw["hash"]))


EMPTY = Head(0, GENESIS)


@dataclass
class Scan:
    """The log as read: its entries (line number, entry) and what is wrong with its lines."""

    entries: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)  # line numbers that are not JSON
    torn_tail: bool = False  # the last line has no newline: a write was cut short
    lines: int = 0

    @property
    def head(self) -> Head:
        if not self.entries:
            return EMPTY
        _, last = self.entries[-1]
        return Head(int(last.get("seq", 0)), str(last.get("mac", "")))

    def mac_at(self, seq: int) -> str | None:
        for _, entry in self.entries:
            if entry.get("seq") == seq:
                return str(entry.get("mac"))
        return None


def scan(data: bytes) -> Scan:
    found = Scan()
    lines = data.split(b"\n")
    found.torn_tail = bool(lines[-1])
    for number, line in enumerate(lines if found.torn_tail else lines[:-1], start=1):
        found.lines = number
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            found.unreadable.append(number)
            continue
        if isinstance(entry, dict):
            found.entries.append((number, entry))
        else:
            found.unreadable.append(number)
    return found


class Anchor:
    """Where the chain's head is exported, out of reach of whoever writes the reports: a
    textfile for node-exporter's textfile collector, and/or a Pushgateway group."""

    def __init__(
        self, deployment: str, textfile_dir: Path | None, pushgateway: str | None, timeout_s: float
    ) -> None:
        self.deployment = deployment
        self.textfile = (
            textfile_dir / f"opsbook_audit_{_safe(deployment)}.prom" if textfile_dir else None
        )
        self.pushgateway = Gateway.parse(pushgateway) if pushgateway else None
        self.timeout_s = timeout_s

    @property
    def configured(self) -> bool:
        return self.textfile is not None or self.pushgateway is not None

    def where(self) -> str:
        return " and ".join(
            str(place) for place in (self.textfile, self.pushgateway) if place is not None
        )

    def _registry(self, head: Head) -> Any:
        from prometheus_client import CollectorRegistry, Gauge

        registry = CollectorRegistry()
        Gauge(
            METRIC,
            "entries in the deployment's remediation audit log; head: the newest entry's MAC",
            ["deployment", "head"],
            registry=registry,
        ).labels(self.deployment, head.mac).set(head.count)
        return registry

    def export(self, head: Head) -> None:
        """Publish the head everywhere configured; OSError naming where it could not."""
        problems = []
        if self.textfile is not None:
            from prometheus_client import write_to_textfile

            try:
                write_to_textfile(str(self.textfile), self._registry(head))  # renamed into place
            except OSError as exc:
                problems.append(f"{self.textfile}: {exc.strerror or exc}")
        if self.pushgateway is not None:
            try:
                self.pushgateway.push(
                    PUSH_JOB, self._registry(head), {"deployment": self.deployment}, self.timeout_s
                )
            except OSError as exc:
                problems.append(f"{self.pushgateway}: {exc}")
        if problems:
            raise OSError(f"the head could not be exported to {'; '.join(problems)}")

    def read(self) -> Head | None:
        """The exported head (the newest of the places, by count); None when nothing was
        exported yet. OSError when a configured place cannot be read."""
        heads = []
        if self.textfile is not None:
            try:
                text = self.textfile.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            heads.append(self._parse(text))
        if self.pushgateway is not None:
            try:
                text = self.pushgateway.get("/metrics", self.timeout_s).decode("utf-8", "replace")
            except OSError as exc:
                raise OSError(f"cannot read the anchor from {self.pushgateway}: {exc}") from None
            heads.append(self._parse(text, job=PUSH_JOB))
        known = [head for head in heads if head is not None]
        return max(known, key=lambda head: head.count) if known else None

    def _parse(self, text: str, job: str | None = None) -> Head | None:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    labels = sample.labels
                    if (
                        sample.name == METRIC
                        and labels.get("deployment") == self.deployment
                        and (job is None or labels.get("job") == job)
                    ):
                        return Head(int(sample.value), labels.get("head", ""))
        except ValueError as exc:
            raise OSError(f"the anchor is not in the Prometheus text format: {exc}") from None
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@contextlib.contextmanager
def _no_signals() -> Iterator[None]:
    """SIGTERM and SIGINT wait until an entry is written whole: the handlers that end a fix
    early must not tear the line that records it."""
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class AuditLog:
    """The deployment's log. `key` is needed to append and to verify MACs; `head()` reads
    without it."""

    def __init__(self, path: Path, key: bytes | None = None, anchor: Anchor | None = None) -> None:
        self.path = path
        self.key = key
        self.anchor = anchor
        # Why the newest append's head was not exported ("" when it was, or needs not be).
        self.unanchored = ""

    def scan(self) -> Scan:
        try:
            return scan(self.path.read_bytes())
        except FileNotFoundError:
            return Scan()

    def entries(self) -> list[dict[str, Any]]:
        return [entry for _, entry in self.scan().entries]

    def head(self) -> dict[str, Any]:
        return self.scan().head.to_dict()

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one entry, written whole and synced; returns it. OSError when the log cannot
        take it. A torn last line, or a log that lost entries the anchor had seen, is first
        recorded by an entry of its own."""
        if self.key is None:
            raise ValueError("the audit log needs its key to append")
        self.unanchored = ""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _no_signals():
            descriptor = _open_for_append(self.path)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)  # one writer at a time, across runs
                found = scan(_read_all(descriptor))
                head = found.head
                lines = found.lines
                pending: list[dict[str, Any]] = []
                run = record.get("run")
                if found.torn_tail:
                    pending.append({"event": "torn", "line": lines, "run": run})
                gap = self._anchored_head(found)
                if gap is not None:
                    pending.append({**gap, "run": run})
                pending.append(record)
                written = bytearray(b"\n" if found.torn_tail else b"")
                entry: dict[str, Any] = {}
                for item in pending:
                    entry = {
                        "seq": head.count + 1,
                        "time": datetime.now(UTC).isoformat(timespec="seconds"),
                        **item,
                        "prev": head.mac,
                    }
                    entry["mac"] = mac_of(self.key, entry)
                    written += (json.dumps(entry, sort_keys=True) + "\n").encode()
                    head = Head(entry["seq"], entry["mac"])
                _write_all(descriptor, bytes(written))
                os.fsync(descriptor)
                if self.anchor is not None and self.anchor.configured:
                    # Still under the log's lock: anchors are exported in the log's order.
                    try:
                        self.anchor.export(head)
                    except OSError as exc:
                        self.unanchored = f"in the audit log, but not anchored: {exc}"
            finally:
                os.close(descriptor)  # and the flock with it
        return entry

    def _anchored_head(self, found: Scan) -> dict[str, Any] | None:
        """A `gap` entry when the log does not hold the head the anchor last saw; None when it
        does, or there is no anchor to compare with."""
        if self.anchor is None or not self.anchor.configured:
            return None
        try:
            anchored = self.anchor.read()
        except OSError as exc:
            self.unanchored = f"the anchor could not be compared: {exc}"
            return None
        if anchored is None or anchored.count == 0:
            return None
        if found.mac_at(anchored.count) == anchored.mac:
            return None
        return {
            "event": "gap",
            "anchor": anchored.to_dict(),
            "found": found.head.to_dict(),
            "reason": "the log does not hold the newest entry its anchor recorded "
            "(entries deleted or rewritten)",
        }


def _read_all(descriptor: int) -> bytes:
    os.lseek(descriptor, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(descriptor, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def _open_for_append(path: Path) -> int:
    """The log's file descriptor. A new log is readable by its owner and its folder's group
    only (opsbook.report_files' file mode)."""
    flags = os.O_RDWR | os.O_APPEND
    try:
        descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    try:
        os.fchmod(descriptor, FILE_MODE)  # whatever the umask left of it
        os.fchown(descriptor, -1, path.parent.stat().st_gid)
    except PermissionError:
        pass  # not a member of the folder's group: the log stays in the runner's own group
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


@dataclass
class Verdict:
    """What `verify` found: problems (tampering or damage), and notes (not tampering, but a
    person should know: fixes whose run ended before they did)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    count: int = 0


def verify(
    path: Path,
    key: bytes,
    anchor: Head | None = None,
    recorded: Head | None = None,
) -> Verdict:
    """Check the chain's MACs and order, and the log against the exported `anchor` and the
    newest run's `recorded` head (findings.json: the weaker one, as the reports' writer can
    change it)."""
    verdict = Verdict()
    found = AuditLog(path).scan()
    verdict.count = len(found.entries)
    # A torn line that a later entry records is reported once, by that entry.
    recorded_torn = {e.get("line") for _, e in found.entries if e.get("event") == "torn"}
    for number in found.unreadable:
        if number in recorded_torn:
            continue
        torn = found.torn_tail and number == found.lines
        what = "torn: a write was cut short" if torn else "not a whole JSON entry"
        verdict.problems.append(f"line {number}: {what}")
    previous, expected_seq = GENESIS, 1
    intents: dict[int, dict[str, Any]] = {}
    for number, entry in found.entries:
        seq = entry.get("seq")
        if seq != expected_seq:
            verdict.problems.append(
                f"line {number}: entry {seq} where {expected_seq} was due (entries missing or "
                "reordered)"
            )
        if entry.get("prev") != previous:
            verdict.problems.append(f"line {number}: does not follow the entry before it")
        if not hmac.compare_digest(str(entry.get("mac", "")), mac_of(key, entry)):
            verdict.problems.append(
                f"line {number}: its MAC does not match its content (edited, or not written "
                "with this deployment's key)"
            )
        previous = str(entry.get("mac"))
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
        event = entry.get("event")
        if event == "intent" and isinstance(seq, int):
            intents[seq] = entry
        elif event == "outcome" and isinstance(entry.get("intent"), int):
            intents.pop(entry["intent"], None)
        elif event == "torn":
            verdict.problems.append(
                f"line {entry.get('line')}: torn (a write was cut short; recorded by entry {seq} "
                f"of run {entry.get('run', '?')})"
            )
        elif event == "gap":
            anchored = entry.get("anchor") or {}
            verdict.problems.append(
                f"entry {seq}: the log had lost entries when it was next written: its anchor "
                f"recorded {anchored.get('count')} entries, the log held "
                f"{(entry.get('found') or {}).get('count')}"
            )
    for seq, entry in intents.items():
        verdict.notes.append(
            f"entry {seq}: {entry.get('remediation')} on {entry.get('target')} (run "
            f"{entry.get('run')}) has an intent and no outcome: its run ended before the fix did"
        )
    head = found.head
    for what, against in (("the exported anchor", anchor), ("the newest run's record", recorded)):
        if against is None or against.count == 0:
            continue
        if head.count < against.count:
            verdict.problems.append(
                f"{against.count - head.count} newest entr(y/ies) deleted ({what} says "
                f"{against.count}, the log holds {head.count})"
            )
        elif found.mac_at(against.count) != against.mac:
            verdict.problems.append(
                f"entry {against.count} differs from {what} (the log was rewritten)"
            )
    return verdict
