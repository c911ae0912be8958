"""Fake ``comfy`` package (model_management, utils, model_patcher)."""
