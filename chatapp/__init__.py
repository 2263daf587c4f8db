"""chatapp: the reference implementation of the AI chat system that the sandbox runs.

A small but real backend (`backend.py`) and queue worker (`worker.py`), and the database schema
(`schema.sql`). They exist so that every check can be proven against live processes. A package
of its own, apart from opsbook: it imports nothing of opsbook, so its container image carries
only this package (containers/app/Dockerfile).
"""
