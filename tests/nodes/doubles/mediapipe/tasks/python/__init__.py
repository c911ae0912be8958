"""Test double of ``mediapipe.tasks.python``: ``BaseOptions``."""

import os


class BaseOptions:
    def __init__(self, model_asset_path=None, **kwargs):
        if model_asset_path is None or not os.path.isfile(model_asset_path):
            raise RuntimeError(f"Unable to open file at {model_asset_path}")
        self.model_asset_path = model_asset_path
