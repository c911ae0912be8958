"""Fixtures of the workflow tests: tiny weights, the pack imported like ComfyUI imports it with the
fake host, the mediapipe test double (see harness.py)."""

from tests.nodes.harness import fake_mediapipe, pack, tiny  # noqa: F401  (pytest fixtures)
