"""Secrets given by reference, and the redactor that keeps them out of every output.

An inventory never holds a secret itself: it says where to read it (`{env: NAME}` or
`{file: PATH}`). The value is read once, at load, into a `Secret`, which prints as
`***` everywhere (repr, str, f-strings, `--showlocals`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

MASK = "***"


class Secret:
    """A secret value that never prints itself."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source  # where it came from, e.g. "env OPSBOOK_PG_PASSWORD": safe to show

    @classmethod
    def unread(cls, source: str) -> Secret:
        """A secret that was named but deliberately not read (an inventory checked without its
        secrets): its value is empty, and its source says so."""
        return cls("", f"{source}, not read")

    def reveal(self) -> str:
        """The clear value, for the one call that needs it (a driver's password argument)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK} from {self.source})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would carry the clear value into xdist workers' reports or caches.
        raise TypeError("a Secret cannot be pickled")


# Credentials written inside URLs (redis://user:pw@host, postgresql://u:pw@h/db).
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s/]+)@")
# key=value and key: value pairs whose key says "secret".
_SECRET_PAIR = re.compile(
    r"(?i)(?P<key>\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key)[\w.-]*)"
    r"(?P<sep>\s*[=:]\s*['\"]?)(?P<val>[^\s'\",;&]+)"
)


class Redactor:
    """Masks known secret values, and credential-shaped text, in anything bound for output."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first so that a secret containing another is masked whole.
        self._values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def add(self, value: str) -> None:
        if len(value) >= 4 and value not in self._values:
            self._values = sorted([*self._values, value], key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, MASK)
        text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        return _SECRET_PAIR.sub(
            lambda m: m.group(0) if m["val"] == MASK else f"{m['key']}{m['sep']}{MASK}", text
        )

    def contains_secret(self, text: str) -> bool:
        return any(value in text for value in self._values)


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 7677): set as a role's
    password, it lets no clear value reach the server or its log."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
