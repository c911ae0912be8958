"""Test double of ``mediapipe`` (see ../README.md): ``Image`` and ``ImageFormat``."""

import numpy as np


class ImageFormat:
    SRGB = "SRGB"


class Image:
    def __init__(self, image_format, data):
        self.image_format, self._data = image_format, np.asarray(data)

    def numpy_view(self):
        return self._data
