"""One remediating run at a time: an advisory lock file beside the reports."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO


class RemediationLock:
    """Held for a whole run; released when the run ends or its process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self, holder: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stream = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stream.seek(0)
            stream.truncate()
            stream.write(f"{holder} pid {os.getpid()}\n")
            stream.flush()
        except BlockingIOError:
            stream.close()
            return False
        except OSError:
            # No room to say who holds it (a full disk): closed, and the lock with it.
            with contextlib.suppress(OSError):
                stream.close()
            raise
        self._file = stream
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
