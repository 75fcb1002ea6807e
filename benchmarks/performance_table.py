"""Print the ``docs/performance.md`` table: per model and setting, pyromv's step time, its ratio
to the hand-written torch reference (measured interleaved in one run), rows per second and
the growth of peak memory over three steps.

Run: ``python -m benchmarks.performance_table [--repeats 30] [--batch-sizes 128 256]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time

import pyro
import torch

from .steps import MODELS, make, pyromv_step, reference_step, setting


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _peak_step_memory_mb(model_name: str, setting_name: str, batch_size: int, impl: str, threads: int = 1) -> float:
    """Peak resident set size during 3 steps above the resident size just before them, in a fresh
    interpreter with ``threads`` torch threads (those of the timings) (MiB).

    torch's CPU allocator keeps no peak statistic and ``ru_maxrss`` remembers the import-time
    peak, so a thread samples ``/proc/self/statm`` every 0.2 ms while the steps run.
    """
    code = (
        "import gc, os, threading, time, torch, pyro\n"
        "from benchmarks.steps import make, setting, pyromv_step, reference_step\n"
        f"torch.set_num_threads({int(threads)}); mods, batch = setting({setting_name!r}, {batch_size})\n"
        f"model, ref = make({model_name!r}, mods); opt = torch.optim.Adam(model.parameters())\n"
        "loss = model.default_loss(); pyro.enable_validation(False)\n"
        f"step = pyromv_step if {impl!r} == 'pyromv' else reference_step\n"
        "arg = loss if step is pyromv_step else ref\n"
        "step(model, arg, opt, batch); gc.collect()\n"
        "page = os.sysconf('SC_PAGE_SIZE')\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * page\n"
        "before, peak, done = rss(), [0], threading.Event()\n"
        "def poll():\n"
        "    while not done.is_set():\n"
        "        peak[0] = max(peak[0], rss()); time.sleep(0.0002)\n"
        "t = threading.Thread(target=poll); t.start()\n"
        "for _ in range(3):\n"
        "    step(model, arg, opt, batch)\n"
        "done.set(); t.join()\n"
        "print((peak[0] - before) / 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--settings", nargs="+", default=["mlp784", "polydigits"])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | setting | batch | pyromv ms/step | reference ms/step | ratio | rows/s "
          "| step peak RSS MiB | reference MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for setting_name in args.settings:
        for batch_size in args.batch_sizes:
            for name in args.models:
                print(_row(name, setting_name, batch_size, args.repeats, args.threads), flush=True)


def _row(name: str, setting_name: str, batch_size: int, repeats: int, threads: int = 1) -> str:
    mods, batch = setting(setting_name, batch_size)
    torch.manual_seed(0)
    model, reference = make(name, mods)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = model.default_loss()

    def ours() -> None:
        pyromv_step(model, loss, optimizer, batch)

    def ref() -> None:
        reference_step(model, reference, optimizer, batch)

    t_ours, t_ref = [], []
    with pyro.validation_enabled(False):
        for _ in range(3):
            ours()
            if reference:
                ref()
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both
            t_ours += _time(ours, 1)
            if reference:
                t_ref += _time(ref, 1)
    gc.collect()
    peak = _peak_step_memory_mb(name, setting_name, batch_size, "pyromv", threads)
    ref_peak = (f"{_peak_step_memory_mb(name, setting_name, batch_size, 'reference', threads):.0f}"
                if reference else "—")
    ms = statistics.median(t_ours) * 1e3
    if reference:
        ref_ms = statistics.median(t_ref) * 1e3
        ref_cell, ratio_cell = f"{ref_ms:.1f}", f"{ms / ref_ms:.3f}"
    else:
        ref_cell = ratio_cell = "—"
    return (f"| {name} | {setting_name} | {batch_size} | {ms:.1f} | {ref_cell} | {ratio_cell} | "
            f"{batch_size / (ms / 1e3):.0f} | {peak:.0f} | {ref_peak} |")

if __name__ == "__main__":
    main()
