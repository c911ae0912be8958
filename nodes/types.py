"""The pack's socket types and the handles that travel through them.

Values on these sockets are plain Python objects passed by reference between nodes and kept in
ComfyUI's output cache, so nodes never modify one: they build a new value instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..mimictalk_lib.pipeline import as_personalised
from . import host

Renderer = host.io.Custom("MIMICTALK_RENDERER")
"""A loaded renderer (:class:`RendererHandle`): base MimicTalk / Real3D-Portrait, or personalised."""
FaceModel = host.io.Custom("MIMICTALK_FACE_MODEL")
"""The BFM 3DMM (``mimictalk_lib.face.FaceModel``, CPU fp32)."""
Audio2Motion = host.io.Custom("MIMICTALK_A2M")
"""ICS-A2M plus its HuBERT audio encoder (:class:`A2MHandle`)."""
Identity = host.io.Custom("MIMICTALK_IDENTITY")
"""A prepared person (``mimictalk_lib.identity.Identity``: frames, segmentation, 3DMM fit, poses)."""
Adapter = host.io.Custom("MIMICTALK_ADAPTER")
"""A personalisation (``mimictalk_lib.adapt.adapter.Adapter``: LoRA, tri-grid, person data)."""
Motion = host.io.Custom("MIMICTALK_MOTION")
"""Expression motion: float32 CPU tensor [T, 64] of BFM expression coefficients at 25 fps."""


@dataclass(frozen=True)
class RendererHandle:
    """What ``MIMICTALK_RENDERER`` carries.

    ``renderer`` is what the pipeline takes (a ``LoadedRenderer``, or a ``PersonalisedRenderer``:
    the ``Renderer`` module under ``.model`` plus the learned tri-grid and person data); ``managed`` is the same module under the host's memory management
    (:func:`nodes.host.manage_model`), loaded with :meth:`module`."""

    renderer: Any
    managed: Any
    name: str
    info: dict = field(default_factory=dict)

    def module(self):
        """The ``Renderer``, loaded onto the compute device."""
        return host.use_model(self.managed)

    @property
    def personalised(self) -> bool:
        return as_personalised(self.renderer) is not None


@dataclass(frozen=True)
class A2MHandle:
    """What ``MIMICTALK_A2M`` carries: the ICS-A2M network and HuBERT, managed together."""

    managed: Any  # holder of nn.ModuleDict(a2m=..., hubert=...)
    name: str

    def modules(self):
        """(a2m, hubert), loaded onto the compute device."""
        both = host.use_model(self.managed)
        return both["a2m"], both["hubert"]
