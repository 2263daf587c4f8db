"""The fixes, one module per system. Each is linked to its checks with `@check(remediation=...)`.

The contract (see opsbook.remediate.plan): `fix(ctx, *, apply) -> Plan` always returns its plan
(the exact commands or SQL), acts only when `apply` is true, changes nothing when the condition
it fixes is absent (so a second application says "nothing to do"), and never swallows an error.
Its docstring says what it changes, the privileges it needs, and whether it can be undone.
"""
