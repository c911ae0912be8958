"""SD-Hybrid adaptation (MimicTalk §3): personalise the base renderer on one identity.

Public API (import from the submodules)::

    from mimictalk_lib.adapt.data import AdaptationData
    from mimictalk_lib.adapt.lpips import load_lpips
    from mimictalk_lib.adapt.train import AdaptConfig, train_adapter
    from mimictalk_lib.adapt.adapter import save_adapter, load_adapter, personalise
    from mimictalk_lib.adapt.official_import import import_official_checkpoint

    data = AdaptationData.from_identity(identity, face_model, renderer.cfg.secc_resolution)
    lpips = load_lpips(".../lpips/alexnet-owt-7be5be79.pth", ".../lpips/lpips_v0.1_alex.pth", device)
    adapter = train_adapter(renderer, data, lpips, AdaptConfig(), work_dir=..., on_step=cb)
    save_adapter("person.safetensors", adapter)
    personalised = personalise(renderer, load_adapter("person.safetensors"))
    personalised.model, personalised.cano_planes, personalised.identity   # what rendering needs

Modules: :mod:`.data` (per-step inputs from a prepared Identity), :mod:`.lpips` (LPIPS v0.1
AlexNet), :mod:`.losses` (upstream losses and weights), :mod:`.train` (trainer and loop),
:mod:`.resume` (resumable checkpoints), :mod:`.adapter` (adapter file, applying it),
:mod:`.official_import` (upstream personalised checkpoints -> adapter).
"""
