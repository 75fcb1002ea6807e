"""Oracle tests run in float64 (so exact identities hold to ~1e-12) on one intra-op thread
(tiny tensors: threads only add contention on a shared 2-core machine)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
