"""Fake ``comfy_api``."""
