"""Quality evaluation of rendered talking heads: metrics (:mod:`.metrics`), the
:func:`evaluate` / :func:`evaluate_identity` functions (:mod:`.evaluate`) and the
``python -m mimictalk_lib evaluate`` command (:mod:`.cli`)."""

from .evaluate import (
    Evaluation, evaluate, evaluate_identity, identity_audio, identity_frames, load_metric_models, load_optional_models,
)

__all__ = ["Evaluation", "evaluate", "evaluate_identity", "identity_audio", "identity_frames", "load_metric_models",
           "load_optional_models"]
