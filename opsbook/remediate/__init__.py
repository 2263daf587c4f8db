"""Remediation machinery: plans, the context a fix gets, runtimes, the lock, budgets, audit log.

The fixes themselves live in the top-level `remediation/` package, one module per system.
"""
