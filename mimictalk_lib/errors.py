"""Exception types raised by the library.

Every message says what is wrong and how to fix it. Nodes let these propagate unchanged so
ComfyUI shows the message to the user.
"""


class MimicTalkError(Exception):
    """Base class of all errors raised on purpose by mimictalk_lib."""


class InputError(MimicTalkError, ValueError):
    """A user-supplied input (image, audio, video, widget value) is unusable."""


class CheckpointError(MimicTalkError):
    """A weights file is of the wrong kind, corrupt, or does not match the expected layout."""


class AssetMissingError(MimicTalkError, FileNotFoundError):
    """A model or data file is missing and could not be obtained automatically."""


class DownloadError(AssetMissingError):
    """Every source of a manifest asset failed (offline, 404, checksum mismatch, ...)."""


class FaceModelMissingError(AssetMissingError):
    """The Basel Face Model files are missing; they must be obtained manually (licence)."""


class DependencyMissingError(MimicTalkError, ImportError):
    """An optional third-party package (e.g. mediapipe) is needed but not installed."""

