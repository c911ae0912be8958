"""Fake ``comfy.model_management``: CPU device, an interrupt flag, recorded model loads."""

import torch


class InterruptProcessingException(Exception):
    pass


interrupt_processing = False
loaded_models = []  # every list passed to load_models_gpu
cache_clears = 0


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def should_use_fp16(device=None, *args, **kwargs):
    return False


def should_use_bf16(device=None, *args, **kwargs):
    return False


def interrupt_current_processing(value=True):
    global interrupt_processing
    interrupt_processing = value


def processing_interrupted():
    return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()


def load_models_gpu(models, memory_required=0, force_full_load=False, **kwargs):
    loaded_models.append(list(models))


def soft_empty_cache(force=False):
    global cache_clears
    cache_clears += 1


def unload_all_models():
    unloaded.append(len(loaded_models))


unloaded = []  # one entry per unload_all_models call
