"""`opsbook merge FOLDER... [--out DIR]`: one report from the shards of a fleet run.

Each FOLDER is a run's or a fleet's report folder (or a reports directory, whose `latest` is
taken), as `--shard i/N` runs leave them on many runners. The merged findings.json (every row
naming its deployment), the fleet summary page and one junit.xml go to DIR (default: a new
folder under the reports directory, which `latest` then points at, so `opsbook status` reads
the merged run).

Exit codes: the merged run's (the worst of the shards': docs/fleet.md); 2 with one line when a
FOLDER holds no findings.json.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsbook.locations import reports_dir


def register(commands: Any) -> None:
    parser = commands.add_parser("merge", help="one report from the shards of a fleet run")
    parser.set_defaults(run=run)
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER")
    parser.add_argument("--out", type=Path, help="where the merged report goes")
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())


def run(args: argparse.Namespace) -> int:
    from opsbook import fleet

    for folder in args.folders:
        if (
            not (folder / fleet.FINDINGS).is_file()
            and not (folder / "latest" / fleet.FINDINGS).is_file()
        ):
            print(f"opsbook merge: {folder}: no findings.json (not a run folder)", file=sys.stderr)
            return 2
    started = datetime.now(UTC)
    fleet_id = secrets.token_hex(4)
    out = args.out or args.reports_dir / f"{started:%Y%m%dT%H%M%SZ}-merged-{fleet_id}"
    out.mkdir(parents=True, exist_ok=True)
    document = fleet.merge_folders(args.folders, started=started, fleet_id=fleet_id)
    fleet.write_merged(out, document)
    if args.out is None:
        fleet.point_latest(args.reports_dir, out)
    print("\n".join(fleet.grid_lines(document)))
    print(f"opsbook merge: {out / fleet.SUMMARY}")
    return int(document["run"]["exit_code"])
