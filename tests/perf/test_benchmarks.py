"""The benchmarks measure what they say (issue 20, item 6): they report memory rather than assert
it, time the call their name names, and use the thread count that ``docs/performance.md``
states (one torch thread for every benchmark but the side-by-side run, which states two)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
#: the pytest-benchmark modules and the table script (the side-by-side run and compare_models
#: have their own documented settings)
MODULES = ["test_log_likelihood", "test_mopoe_scaling", "test_samplers", "test_training_step", "performance_table"]


def test_docs_state_one_thread_for_the_step_benchmarks():
    text = (ROOT / "docs" / "performance.md").read_text()
    assert "one torch thread" in text and "--threads 1" in text
    assert re.search(r"one thread", text)


@pytest.mark.parametrize("module", MODULES)
def test_benchmarks_report_and_do_not_assert(module):
    """A benchmark is a measurement: a slow or memory-hungry run is a figure to read, not a failure."""
    tree = ast.parse((BENCHMARKS / f"{module}.py").read_text())
    asserts = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert not asserts, f"benchmarks/{module}.py asserts on lines {asserts}"


@pytest.mark.parametrize("module", MODULES)
def test_benchmarks_use_the_documented_thread_count(module):
    """Every ``torch.set_num_threads`` call (in code or in a subprocess's source) takes the module's
    ``THREADS = 1`` or, in the table script, the ``--threads`` option (default 1)."""
    source = (BENCHMARKS / f"{module}.py").read_text()
    calls = re.findall(r"set_num_threads\(([^)]*)\)", source)
    assert calls, module
    allowed = {"THREADS", "{THREADS}", "args.threads", "{int(threads"}  # the regex stops at the first ")"
    assert set(calls) <= allowed, calls
    if any("THREADS" in c for c in calls):
        assert re.search(r"^THREADS = 1\b", source, re.M)
    if module == "performance_table":
        assert re.search(r'"--threads", type=int, default=1\)', source)


class _FakeBenchmark:
    """Records the function a benchmark times, calls it once."""

    def __init__(self):
        self.extra_info = {}
        self.timed = []

    def pedantic(self, fn, rounds=1, iterations=1):
        self.timed.append(fn)
        return fn()


def test_the_memory_benchmark_times_the_call_not_the_measurement(monkeypatch):
    """The old memory benchmark timed the three interpreters it started; now the timed function is
    the K = 1000, chunk-100 likelihood call and the memory is measured outside it, and reported."""
    import benchmarks.test_log_likelihood as bench
    import pyromv.metrics as metrics

    state = {"timing": False, "calls": []}

    def fake_peak(K, chunk):
        state["calls"].append(state["timing"])
        return 10.0 * K / chunk

    monkeypatch.setattr(bench, "_peak_mb", fake_peak)
    monkeypatch.setattr(bench, "ROWS", 4)
    monkeypatch.setattr(bench, "SETUP", bench.SETUP.replace("torch.arange(64)", "torch.arange(4)"))
    seen = []
    real = metrics.log_likelihood

    def spy(model, data, **kw):
        seen.append((state["timing"], kw.get("K"), kw.get("particle_chunk")))
        return real(model, data, **{**kw, "K": 5, "particle_chunk": 5})

    monkeypatch.setattr(metrics, "log_likelihood", spy)
    fake = _FakeBenchmark()
    original = fake.pedantic

    def timed(fn, **kw):
        state["timing"] = True
        try:
            return original(fn, **kw)
        finally:
            state["timing"] = False

    fake.pedantic = timed
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the benchmark started a process"))
    bench.test_log_likelihood_peak_memory(fake)
    assert state["calls"] == [False, False, False]  # every memory measurement outside the timing
    assert (True, 1000, 100) in seen  # the timed function is the call whose memory is reported
    assert fake.extra_info["peak_rss_growth_MiB (K=1000, one chunk)"] == 10.0
    assert fake.extra_info["chunked / one chunk (K=1000)"] == pytest.approx(10.0)
