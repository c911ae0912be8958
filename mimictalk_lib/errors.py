"""Exception types raised by the library.

Every message says what is wrong and how to fix it, in the terms of whoever called: the library's
message names its functions and arguments; where the remedy differs for a node user, the error also
carries ``in_node``, the same message naming the node and widget, which the nodes show instead
(``nodes.messages.node_terms``). Nodes let everything else propagate unchanged so ComfyUI shows the
message to the user.
"""

from typing import Optional


class MimicTalkError(Exception):
    """Base class of all errors raised on purpose by mimictalk_lib.

    ``in_node``: the message in a node user's terms (node and widget names instead of Python
    functions), when it differs from the library's."""

    def __init__(self, *args, in_node: Optional[str] = None) -> None:
        super().__init__(*args)
        self.in_node = in_node


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

