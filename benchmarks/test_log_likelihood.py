"""Benchmarks of ``pyromv.metrics.log_likelihood`` (not tests: run them explicitly).

``pytest benchmarks/test_log_likelihood.py --benchmark-only``

* throughput, in importance samples (rows x K) per second, of the joint estimate on the default
  PolyDigits MVAE (3 modalities, MLP 64-128-128-16, batch of 64 rows), with and without PSIS;
* peak memory at K = 100 and K = 1000 with the default chunk of 100 particles, and at K = 1000
  in a single chunk, *reported* (``extra_info`` and printed), not asserted. torch's CPU
  allocator keeps no peak statistic and tracemalloc does not see its allocations, so each
  figure is the growth of the process's resident set during one call: Linux's peak RSS
  (``VmHWM``) is reset to the current RSS (``/proc/self/clear_refs``) just before the call and
  read just after, in a fresh interpreter that has already run a tiny warm-up call (imports,
  arviz, first kernels). Linux only. The memory benchmark's *timing* is that of the call whose
  memory it reports (K = 1000 in chunks of 100, in this process), never of the interpreters
  started to measure the memory.

One torch thread (``THREADS``), as ``docs/performance.md`` states for its step benchmarks.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

ROWS = 64
THREADS = 1  # docs/performance.md: one torch thread
SETUP = (
    "import torch\n"
    "from pyromv.data import PolyDigits\n"
    "from pyromv.models import MVAE\n"
    "torch.manual_seed(0)\n"
    "source = PolyDigits()\n"
    f"data = source.load('test').subset(torch.arange({ROWS}))\n"
    "model = MVAE(source.modalities())\n"
)


def _setup():
    namespace: dict = {}
    exec(SETUP, namespace)  # noqa: S102 (our own constant code, shared with the subprocess)
    return namespace["model"], namespace["data"]


@pytest.mark.parametrize("khat", [True, False], ids=["psis", "no-psis"])
@pytest.mark.parametrize("K", [100, 1000])
def test_log_likelihood_throughput(benchmark, K, khat):
    import warnings

    from pyromv.metrics import log_likelihood

    torch.set_num_threads(THREADS)
    model, data = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat warnings of an untrained model
        log_likelihood(model, data, K=K, khat=khat, seed=0)  # warm-up
        benchmark.pedantic(
            lambda: log_likelihood(model, data, K=K, khat=khat, seed=0), rounds=5, iterations=1
        )
    # contention on a shared machine only ever slows a round: the best round is the cleanest
    mean_rate = ROWS * K / benchmark.stats.stats.mean
    best_rate = ROWS * K / benchmark.stats.stats.min
    benchmark.extra_info["samples_x_K_per_s (mean)"] = mean_rate
    benchmark.extra_info["samples_x_K_per_s (best round)"] = best_rate
    print(f"\nK={K} psis={khat}: {mean_rate:,.0f} samples x K per second "
          f"(best round {best_rate:,.0f})")


def _peak_mb(K: int, particle_chunk: int) -> float:
    code = SETUP + (
        "import gc, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"torch.set_num_threads({THREADS})\n"
        "from pyromv.metrics import log_likelihood\n"
        "log_likelihood(model, data.subset(torch.arange(2)), K=30, particle_chunk=30)  # warm-up\n"
        "def status(key):  # KiB\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1])\n"
        "gc.collect()\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # reset the peak (VmHWM) to the current RSS\n"
        "before = status('VmRSS:')\n"
        f"log_likelihood(model, data, K={K}, particle_chunk={particle_chunk}, batch_size=64)\n"
        "print((status('VmHWM:') - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_log_likelihood_peak_memory(benchmark):
    from pyromv.metrics import log_likelihood

    results = {  # measured in fresh interpreters, outside the timing
        "K=100, chunk 100": _peak_mb(100, 100),
        "K=1000, chunk 100": _peak_mb(1000, 100),
        "K=1000, one chunk": _peak_mb(1000, 1000),
    }
    for name, mb in results.items():
        benchmark.extra_info[f"peak_rss_growth_MiB ({name})"] = mb
        print(f"\npeak RSS growth, {name}: {mb:.1f} MiB")
    # chunking should bound memory by the chunk: reported as a ratio, for the reader to judge
    ratio = results["K=1000, chunk 100"] / max(results["K=1000, one chunk"], 1e-9)
    benchmark.extra_info["chunked / one chunk (K=1000)"] = ratio
    print(f"K=1000: chunks of 100 use {ratio:.2f} of the single chunk's peak growth")
    torch.set_num_threads(THREADS)
    model, data = _setup()
    kwargs = {"K": 1000, "particle_chunk": 100, "batch_size": 64, "seed": 0}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat warnings of an untrained model
        log_likelihood(model, data, **kwargs)  # warm-up
        benchmark.pedantic(lambda: log_likelihood(model, data, **kwargs), rounds=3, iterations=1)
