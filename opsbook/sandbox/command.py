"""`python -m opsbook sandbox up|status|down|start|stop|restart|recreate|scale`.

The sandbox's own command, inside the sandbox package: opsbook.cli loads it by name, since
production code never imports opsbook.sandbox.

`up`, `status` and `down` take `--engine compose` to run the stack as a compose project on a
container engine (compose.yaml; docs/compose.md) instead of native processes.

Exit codes: 0 done; 1 a component failed (one line naming it, then the tail of its log, on
stderr); 2 bad usage, in one line: `status --dir` on a folder that does not exist (status never
creates one), `scale` to a count outside 1 to MAX_REPLICAS; 3 `status` found a component not
running (without --dir, also when the default sandbox folder does not exist yet).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from opsbook.compose import ComposeError
from opsbook.locations import state_dir
from opsbook.sandbox.process import SandboxError
from opsbook.sandbox.stack import COMPONENTS, MAX_REPLICAS, SCALABLE, ComponentStatus, Stack

ENV_SANDBOX_DIR = "OPSBOOK_SANDBOX_DIR"
ENGINES = ("native", "compose")
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


def register(commands: Any) -> None:
    sandbox = commands.add_parser("sandbox", help="run a local instance of the AI chat system")
    sandbox.set_defaults(run=run)
    actions = sandbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"sandbox directory (default: ${ENV_SANDBOX_DIR}, else .opsbook/sandbox in its home)",
    )
    engine = argparse.ArgumentParser(add_help=False)
    engine.add_argument(
        "--engine",
        choices=ENGINES,
        default="native",
        help="native processes (default) or a compose project on a container engine "
        "(then DIR defaults to .opsbook/compose in opsbook's home)",
    )
    for action, text in (
        ("up", "start every component; prints the inventory path last"),
        ("status", "one line per component; exit 3 unless all run"),
        ("down", "stop every component"),
    ):
        parser = actions.add_parser(action, help=text, parents=[where, engine])
        if action == "up":
            parser.add_argument(
                "--name",
                default="sandbox",
                help="the deployment's name in its inventory (default: sandbox); a fleet of "
                "sandboxes, each `up --dir`, needs one each (native engine)",
            )
    for action in ("start", "stop", "restart", "recreate"):
        one = actions.add_parser(action, help=f"{action} one component", parents=[where])
        one.add_argument("component", choices=COMPONENTS)
    scale = actions.add_parser("scale", help="run N processes of a component", parents=[where])
    scale.add_argument("component", choices=SCALABLE)
    scale.add_argument("count", type=int, help=f"1 to {MAX_REPLICAS}")


def _sandbox_dir(given: Path | None) -> Path:
    if given is not None:
        return given.absolute()
    return Path(os.environ.get(ENV_SANDBOX_DIR) or state_dir("sandbox")).absolute()


def _failed(what: str, exc: Exception) -> int:
    """One line saying what failed, then the tail of the log behind it when there is one."""
    print(f"{what}: {exc}", file=sys.stderr)
    for line in getattr(exc, "log_tail", []):
        print(f"  | {line}", file=sys.stderr)
    return EXIT_FAILED


def _holds_compose_project(stack: Stack) -> bool:
    """The directory was made by `up --engine compose` (its inventory has a compose section)."""
    if stack.layout.state_file.exists():
        return False
    try:
        text = stack.layout.inventory.read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.startswith("compose:") for line in text.splitlines())


def _usage(args: argparse.Namespace) -> str:
    """What is wrong with the command line that argparse cannot see; '' when nothing."""
    if args.action == "status" and args.dir is not None and not args.dir.is_dir():
        return f"--dir {args.dir}: no such folder (no sandbox there)"
    if args.action == "scale" and not 1 <= args.count <= MAX_REPLICAS:
        return f"cannot scale {args.component} to {args.count} (1 to {MAX_REPLICAS})"
    return ""


def run(args: argparse.Namespace) -> int:
    problem = _usage(args)
    if problem:
        print(f"sandbox {args.action}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "engine", "native") == "compose":
        return _run_compose(args)
    directory = _sandbox_dir(args.dir)
    if args.action == "status" and not directory.is_dir():
        # Nothing was ever set up here: every component is stopped, and status makes no folder.
        for name in COMPONENTS:
            print(ComponentStatus(name, False, None, None).line())
        return EXIT_NOT_RUNNING
    stack = Stack(directory, getattr(args, "name", "sandbox"))
    try:
        if args.action == "up":
            inventory = stack.up()
            for status in stack.status():
                print(status.line())
            print(inventory)
        elif args.action == "down":
            if _holds_compose_project(stack):
                print(
                    f"sandbox down: {stack.dir} holds a compose project, not native processes: "
                    "add --engine compose",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            stack.down()
        elif args.action == "status":
            statuses = stack.status()
            for status in statuses:
                print(status.line())
            return 0 if all(s.running for s in statuses) else EXIT_NOT_RUNNING
        elif args.action == "start":
            stack.start(args.component)
        elif args.action == "stop":
            stack.stop(args.component)
        elif args.action == "scale":
            stack.scale(args.component, args.count)
        elif args.action == "recreate":
            stack.recreate(args.component)
        else:
            stack.restart(args.component)
    except (SandboxError, OSError) as exc:
        return _failed(f"sandbox {args.action}", exc)
    return 0


def _run_compose(args: argparse.Namespace) -> int:
    from opsbook.sandbox.compose import ComposeStack

    directory = (args.dir or state_dir("compose")).absolute()
    stack = ComposeStack(directory)
    try:
        if args.action == "up":
            inventory = stack.up()
            for status in stack.status():
                print(status.line())
            print(inventory)
        elif args.action == "down":
            stack.down()
        else:
            statuses = stack.status()
            for status in statuses:
                print(status.line())
            return 0 if all(s.running for s in statuses) else EXIT_NOT_RUNNING
    except (SandboxError, ComposeError, OSError) as exc:
        return _failed(f"sandbox {args.action} --engine compose", exc)
    return 0
