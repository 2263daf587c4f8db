"""One module per `python -m opsbook` command."""
