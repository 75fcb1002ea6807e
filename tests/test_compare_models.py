"""``benchmarks/compare_models.py``: planning and the markdown table, on fake metrics (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.compare_models import (
    Job,
    Record,
    parse_epochs,
    parse_variant,
    plan,
    summarize,
    table,
    write_outputs,
)


def _metrics(elbo: float, ll: float, coh: tuple[float, ...], joint: float, seconds=(0.5, 1.5)) -> dict:
    """A metrics dict shaped like ``pyromv.cli.train.run``'s return value."""
    return {
        "test_elbo": elbo,
        "epochs": len(seconds),
        "stopped_early": False,
        "seconds": 9.0,
        "history": [{"epoch": i + 1, "train_loss": 1.0, "seconds": s} for i, s in enumerate(seconds)],
        "evaluation": {
            "log_likelihood": {"mean": ll, "stderr": 0.25, "rows": 200, "num_particles": 100,
                               "khat_fraction_above_threshold": 0.125, "khat_threshold": 0.7},
            "coherence": {"by_size": {str(k + 1): c for k, c in enumerate(coh)}},
            "joint_coherence": joint,
            "seconds": 3.0,
        },
        "compare": {"trainer": {"epochs": 100, "patience": 15}},
    }


def _record(data: str, label: str, seed: int, metrics: dict | None, run_dir: str = "none") -> Record:
    job = Job(data, label.split("-")[0], label, seed, [f"model={label}", f"data={data}", "missing_rate=0.3"],
              run_dir)
    if metrics is None:
        return Record(job, "error", error="exit code 1: RuntimeError: NaN | in the loss")
    return Record(job, "ok", summarize(metrics))


def test_summarize_reads_the_cli_fields():
    s = summarize(_metrics(-120.0, -110.0, (0.5, 0.75), 0.25))
    assert s["test_elbo"] == -120.0
    assert s["log_likelihood"] == -110.0 and s["log_likelihood_stderr"] == 0.25
    assert s["khat_fraction_above_threshold"] == 0.125
    assert s["coherence_by_size"] == {1: 0.5, 2: 0.75}
    assert s["seconds_per_epoch"] == pytest.approx(1.0)
    assert s["patience"] == 15


def test_table_one_seed_several_seeds_and_errors():
    records = [
        _record("polydigits", "mvae", 0, _metrics(-120.0, -110.0, (0.5, 0.75), 0.25)),
        _record("polydigits", "mopoe", 0, _metrics(-100.0, -90.0, (0.6, 0.8), 0.3)),
        _record("polydigits", "mopoe", 1, _metrics(-102.0, -92.0, (0.8, 0.9), 0.5)),
        _record("polydigits", "mmvae", 0, None),
        _record("polyfashion", "mvae", 0, _metrics(-1.0, -1.0, (0.1, 0.2, 0.3, 0.4), 0.1)),
    ]
    lines, notes = table(records, "polydigits")
    assert lines[0] == ("| model | test ELBO | log-likelihood ± s.e. (k-hat > 0.7) | coherence given 1 "
                        "| coherence given 2 | joint coherence | s/epoch | epochs |")
    assert lines[2] == "| mvae | -120.00 | -110.00 ± 0.25 (12%) | 0.500 | 0.750 | 0.250 | 1.00 | 2 |"
    # two seeds: mean ± s.d. over the seeds
    assert lines[3] == ("| mopoe | -101.00 ± 1.41 | -91.00 ± 1.41 (12%) | 0.700 ± 0.141 | 0.850 ± 0.071 "
                        "| 0.400 ± 0.141 | 1.00 | 2 |")
    assert lines[4].startswith("| mmvae | error: exit code 1: RuntimeError: NaN \\| in the loss | — |")
    assert len(lines) == 5 and all(line.count(" | ") == lines[0].count(" | ") for line in lines[2:])
    assert notes == ["mmvae seed 0 failed: exit code 1: RuntimeError: NaN | in the loss"]
    fashion, _ = table(records, "polyfashion")
    assert "coherence given 4" in fashion[0]


def test_write_outputs_links_the_pictures_and_saves_the_numbers(tmp_path: Path):
    run_dir = tmp_path / "runs" / "mvae"
    run_dir.mkdir(parents=True)
    from PIL import Image

    Image.new("RGBA", (800, 60), (200, 10, 10, 255)).save(run_dir / "cross_generation.png")
    records = [
        _record("polydigits", "mvae", 0, _metrics(-120.0, -110.0, (0.5, 0.75), 0.25), str(run_dir)),
        _record("polydigits", "mmvae", 0, None),
    ]
    output = tmp_path / "docs" / "results.md"
    output.parent.mkdir()
    write_outputs(records, ["polydigits"], output, "python -m benchmarks.compare_models --jobs 2", 2)
    text = output.read_text()
    assert "Produced by `python -m benchmarks.compare_models --jobs 2`" in text
    assert "torch " in text and "CPUs" in text
    assert "## PolyDigits" in text and "K = 100 particles on 200 test rows" in text
    assert "at most 100 epochs, patience 15" in text
    assert "- mvae: [results/polydigits/mvae.png](results/polydigits/mvae.png)" in text
    assert "- mmvae: no picture" in text
    with Image.open(tmp_path / "docs" / "results" / "polydigits" / "mvae.png") as copy:
        assert copy.mode == "L" and copy.size == (400, 30)  # grey levels, at most 400 pixels wide
    raw = json.loads((tmp_path / "docs" / "results" / "results.json").read_text())
    assert [r["status"] for r in raw["runs"]] == ["ok", "error"]
    assert raw["runs"][0]["summary"]["test_elbo"] == -120.0


def test_plan_variants_and_epochs(tmp_path: Path):
    assert parse_variant("mvae-warmup:trainer.kl_warmup_epochs=5", ["mvae", "mopoe"]) == (
        "mvae-warmup", "mvae", ["trainer.kl_warmup_epochs=5"])
    assert parse_variant("slow:model=mopoe,trainer.lr=1e-4", ["mvae", "mopoe"])[1] == "mopoe"
    with pytest.raises(ValueError):
        parse_variant("nothing:trainer.lr=1", ["mvae"])
    assert parse_epochs("7", ["polydigits", "polyfashion"]) == {"polydigits": 7, "polyfashion": 7}
    assert parse_epochs("polyfashion=3", ["polydigits", "polyfashion"])["polyfashion"] == 3
    variant = parse_variant("mvae-warmup:trainer.kl_warmup_epochs=5", ["mvae"])
    jobs = plan(["mvae"], ["polyfashion"], {"polyfashion": 4}, 2, tmp_path, [variant], ["model.latent_dim=8"])
    assert [(j.label, j.seed) for j in jobs] == [("mvae", 0), ("mvae", 1), ("mvae-warmup", 0), ("mvae-warmup", 1)]
    assert jobs[3].run_dir == str(tmp_path / "polyfashion" / "mvae-warmup" / "seed1")
    for override in ("model=mvae", "data=polyfashion", "data.num_modalities=5", "missing_rate=0.3",
                     "num_threads=1", "trainer.epochs=4", "trainer.seed=1", "trainer.kl_warmup_epochs=5",
                     "model.latent_dim=8"):
        assert override in jobs[3].overrides
