"""The end of a command that applies one planned fix (`maintenance on|off`, `incident contain|
release`, `secrets rotate`): what was done, in the terminal, and the command's exit code.

0 done (or nothing to do); 1 a step failed (the plan's lines say which); 3 refused (not
allowed, over budget, the deployment's lock held); 11 done, but the audit log could not take
its entry.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from opsbook.remediate.audit import EXIT_NOT_AUDITED
from opsbook.remediate.runner import Attempt

EXIT_FAILED = 1
EXIT_REFUSED = 3


def said(action: str, attempt: Attempt, redact: Callable[[str], str]) -> int:
    """Print the attempt's summary and plan (a refusal: one line on stderr); its exit code."""
    if attempt.status in ("skipped", "refused"):
        print(redact(f"{action}: refused: {attempt.reason}"), file=sys.stderr)
        return EXIT_REFUSED
    print(redact(f"{action}: {attempt.summary()}"))
    for line in attempt.plan.lines() if attempt.plan else []:
        print(redact(f"  {line}"))
    if attempt.status not in ("applied", "nothing-to-do"):
        return EXIT_FAILED
    if attempt.not_audited:
        print(f"{action}: {attempt.status}, {attempt.not_audited}", file=sys.stderr)
        return EXIT_NOT_AUDITED
    return 0
