"""The fixes, one module per system. Each is linked to its checks with `@check(remediation=...)`.

The contract (checked at collection by opsbook.remediate.contract; docs/remediation.md):
`fix(ctx: Context, *, apply: bool) -> Plan` always returns its plan (the exact commands or
SQL), acts only when `apply` is true, changes nothing when the condition it fixes is absent (so
a second application says "nothing to do"), and never swallows an error. Its docstring says
what it changes (`Changes:`), the privileges it needs (`Privileges:`), and whether it can be
undone (`Undo:`).
"""
