"""Fake ``comfy_api.latest.ui`` (preview helpers are added when a node needs them)."""
