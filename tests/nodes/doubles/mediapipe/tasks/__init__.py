"""Test double of ``mediapipe.tasks``."""
