"""Known vulnerabilities in the stack's container images, as Trivy reports them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msgspec import Struct

from opsbook.errors import NotEvaluated

SCAN_TIMEOUT_S = 600  # a first scan downloads Trivy's database


class Vulnerability(Struct, frozen=True):
    target: str
    package: str
    installed: str
    fixed: str
    vulnerability_id: str
    severity: str

    def line(self) -> str:
        fixed = f"fixed in {self.fixed}" if self.fixed else "no fix yet"
        return (
            f"{self.severity} {self.vulnerability_id} {self.package} {self.installed} "
            f"({fixed}) in {self.target}"
        )


def trivy_vulnerabilities(report: Mapping[str, Any]) -> list[Vulnerability]:
    """Every vulnerability of a `trivy image --format json` report (schema version 2)."""
    found = []
    for result in report.get("Results") or []:
        for vuln in result.get("Vulnerabilities") or []:
            found.append(
                Vulnerability(
                    target=str(result.get("Target", "")),
                    package=str(vuln.get("PkgName", "")),
                    installed=str(vuln.get("InstalledVersion", "")),
                    fixed=str(vuln.get("FixedVersion", "")),
                    vulnerability_id=str(vuln.get("VulnerabilityID", "")),
                    severity=str(vuln.get("Severity", "UNKNOWN")),
                )
            )
    return found


def compose_images(compose_file: Path) -> list[str]:
    """The images the compose file's services name, each once."""
    from opsbook import yamltext

    document = yamltext.safe_load(compose_file.read_text(encoding="utf-8")) or {}
    services = document.get("services") or {}
    return sorted(
        {str(s["image"]) for s in services.values() if isinstance(s, dict) and s.get("image")}
    )


def trivy() -> str | None:
    """Where the `trivy` program is, if it is installed."""
    return shutil.which("trivy")


def fixable_vulnerabilities(
    program: str, image: str, severities: Sequence[str], *, timeout_s: float = SCAN_TIMEOUT_S
) -> list[Vulnerability]:
    """The image's vulnerabilities of the given severities that have a fix (`trivy image`).

    Raises NotEvaluated when Trivy fails or gives no report within `timeout_s`.
    """
    command = [
        program, "image", "--quiet", "--format", "json", "--ignore-unfixed",
        "--severity", ",".join(severities), "--timeout", f"{timeout_s:g}s", image,
    ]  # fmt: skip
    try:
        # Trivy stops itself at --timeout; the margin covers its start and its exit.
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s + 30, check=False
        )
        report = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise NotEvaluated(f"trivy: {image}: scan failed: {exc}") from None
    if report is None:
        reason = done.stderr.strip()[-200:]
        raise NotEvaluated(f"trivy: {image}: trivy exited {done.returncode}: {reason}")
    return [v for v in trivy_vulnerabilities(report) if v.severity in severities]
