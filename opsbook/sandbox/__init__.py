"""The sandbox: a complete local instance of the AI chat system, for trying the checks.

PostgreSQL, Redis, the reference backend and worker, nginx and Prometheus run as native
processes on 127.0.0.1, with every file under one directory. See docs/sandbox.md; the entry
point is `opsbook.sandbox.stack.Stack` (or `python -m opsbook sandbox up`).
"""
