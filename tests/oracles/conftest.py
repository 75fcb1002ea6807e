"""Oracle tests run in float64, so exact identities hold to ~1e-12 (one intra-op thread, as
every test: see tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _oracles_in_float64(float64):
    yield
