"""Fixtures for the scale-out tests: the pipeline's tiny renderer, synthetic face model and helpers."""

from tests.pipeline.conftest import face_model, make_identity, motion, renderer  # noqa: F401  (fixtures and helpers shared)
