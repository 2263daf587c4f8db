"""Probes observe a target and return facts; checks decide what the facts mean."""
