"""`python -m opsbook`: see opsbook.cli."""

from opsbook.cli import main

raise SystemExit(main())
