"""Shared fixtures: a clean Pyro param store, seeded RNGs and Pyro validation for every test."""

import random

import numpy as np
import pyro
import pytest
import torch

# tiny networks: one intra-op thread is faster than two and keeps timings stable on 2 cores
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    pyro.clear_param_store()
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002  (seeds the legacy global RNG that libraries may use)
    torch.manual_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Run a test in float64 (exact identities of the oracles hold to ~1e-12)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny tensors only gain contention from more on a shared
    machine (measured 30x in the common-surface tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
