"""`opsbook check` from the checkout: pytest's options and opsbook's, in either spelling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opsbook.commands.check import joined


def test_options_and_their_values_are_joined() -> None:
    assert joined(["-m", "daily", "--inventory", "/etc/opsbook/prod.yaml", "--lf"]) == [
        "-m",
        "daily",
        "--inventory=/etc/opsbook/prod.yaml",
        "--lf",
    ]
    assert joined(["--inventory=/a b.yaml", "--inventory"]) == [
        "--inventory=/a b.yaml",
        "--inventory",
    ]


def test_an_inventory_outside_the_checkout_given_with_a_space(tmp_path: Path) -> None:
    """pytest alone takes the PATH of `--inventory PATH` for a folder of tests and collects
    nothing of opsbook's; `opsbook check` runs the checks either way."""
    inventory = tmp_path / "my prod.yaml"
    inventory.write_text(
        "name: prod\nhttp:\n  backend: {kind: backend, url: 'http://127.0.0.1:9/'}\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "opsbook",
            "check",
            "--collect-only",
            "-q",
            "--inventory",
            str(inventory),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tests collected" in done.stdout
    assert "checks/test_health.py::" in done.stdout


def test_check_selects_a_check_and_is_not_taken_for_checks(tmp_path: Path) -> None:
    """`--check=ID` is opsbook's selection, passed on to pytest, not a shortening of
    `--checks DIR` (argparse would take it for one and say there is no such folder)."""
    done = subprocess.run(
        [sys.executable, "-m", "opsbook", "check", "--collect-only", "-q", "--check=HEALTH-001"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert collected, done.stdout
    assert all("test_health_endpoint_answers_ok" in line for line in collected), done.stdout
