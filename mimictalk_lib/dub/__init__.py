"""Dubbing: the user's own full-resolution video, with the face saying new speech.

:mod:`.pasteback` puts a rendered head crop back into its source frame; :mod:`.timeline` maps
output frames to source frames and motion; :mod:`.source` streams source frames; :mod:`.dub`
runs the whole job (:func:`dub_video`)."""

from .dub import DubReport, DubResult, dub_video
from .pasteback import CropTransform, blend_mask, colour_match, paste_back, to_crop, warp_to_source

__all__ = ["DubReport", "DubResult", "dub_video", "CropTransform", "blend_mask", "colour_match", "paste_back", "to_crop", "warp_to_source"]
