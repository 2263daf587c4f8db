"""`opsbook remediate` on a check that was blocked by a dependency: it names the cause and
touches nothing (its own fix would act on a symptom)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_fleet import run_folder


def test_a_blocked_check_points_at_its_cause(tmp_path: Path) -> None:
    inventory = tmp_path / "prod.yaml"
    inventory.write_text(
        f"name: prod\nstate_dir: {tmp_path / 'state'}\n"
        "http:\n  backend: {kind: backend, url: 'http://127.0.0.1:9/'}\n"
    )
    folder = run_folder(tmp_path / "reports" / "run", "prod", {"HEALTH-001": "blocked"}, 10)
    document = json.loads((folder / "findings.json").read_text())
    document["findings"][0].update(
        target="backend", blocked_by="redis queue", remediation="opsbook.remediation.x.y"
    )
    (folder / "findings.json").write_text(json.dumps(document))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "opsbook", "remediate", str(folder), "--check", "HEALTH-001"),
            *("--inventory", str(inventory), "--reports-dir", str(tmp_path / "reports")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == (
        "HEALTH-001 on backend: blocked by redis queue in that run: remediate that first, "
        "then run the checks again"
    )
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("audit*"))
