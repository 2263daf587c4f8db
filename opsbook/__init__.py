"""opsbook: operations runbooks as executable, trustworthy checks.

The public surface for check authors is small: `check`, `Severity`, and `TargetUnreachable`.
"""

from opsbook.check import Severity, check
from opsbook.errors import TargetUnreachable

__all__ = ["Severity", "TargetUnreachable", "check"]
