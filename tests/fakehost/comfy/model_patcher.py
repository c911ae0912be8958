"""Fake ``comfy.model_patcher``: a pass-through ModelPatcher."""


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size

    def clone(self):
        return ModelPatcher(self.model, self.load_device, self.offload_device, self.size)
