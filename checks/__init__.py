"""The packaged checks, one module per area of the runbooks (installed as `opsbook.checks`)."""
