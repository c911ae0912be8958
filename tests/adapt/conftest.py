"""Fixtures for the adaptation tests: the tiny random renderer and a synthetic identity for it."""

import pytest

from tests.adapt.synthetic import make_data
from tests.fixtures.tiny_renderer import random_renderer


@pytest.fixture(scope="session")
def tiny_base():
    return random_renderer("mimictalk", seed=5)


@pytest.fixture(scope="session")
def data(tiny_base):
    return make_data(tiny_base)
