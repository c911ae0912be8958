"""The Real3D-Portrait / MimicTalk tri-plane NeRF renderer in plain PyTorch.

Public API (imported lazily, so ``import mimictalk_lib.renderer`` is cheap)::

    from mimictalk_lib.renderer import load_renderer, RendererConfig, Renderer

    loaded = load_renderer("model_ckpt_steps_10000.ckpt", device=device, dtype=torch.bfloat16)  # a GPU device
    planes = loaded.cano_planes                      # personalised tri-grid, or
    planes = loaded.model.cano_planes(ref_image)     # one-shot (Real3D-Portrait) from an image
    source = RenderSource(planes, cano_secc, src_secc, kp_s, ref_torso, bg, segmap)  # per identity
    out = loaded.model.render_frames(source, drv_secc, camera, kp_d, chunk_size=4)
    out.image  # [T, 3, 512, 512] in [-1, 1]

Modules: :mod:`.config` (RendererConfig, inference from shapes), :mod:`.model` (Renderer),
:mod:`.loading` (load_renderer), :mod:`.volume` (rays, sampling, ray marching), and the
networks :mod:`.img2plane`, :mod:`.segformer`, :mod:`.superres`, :mod:`.torso`,
:mod:`.stylegan`, :mod:`.vit`, :mod:`.deeplab`.
"""

from importlib import import_module

_EXPORTS = {
    "RendererConfig": ".config",
    "infer_renderer_config": ".config",
    "Renderer": ".model",
    "RenderOutput": ".model",
    "RenderSource": ".model",
    "SourceInputs": ".model",
    "load_renderer": ".loading",
    "LoadedRenderer": ".loading",
    "PersonData": ".loading",
    "PersonalisedRenderer": ".loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
