"""Fake ``comfy.cli_args``: the parsed command line (only the flags the pack reads)."""

from types import SimpleNamespace

args = SimpleNamespace(disable_metadata=False, cpu=True)
