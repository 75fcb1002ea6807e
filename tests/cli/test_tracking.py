"""``pyromv-train logger=...``: the run's losses, evaluation metrics, pictures and config reach
the tracker; bad logger options fail before anything is loaded."""

import json

import pytest
from hydra import compose, initialize

from pyromv.cli.errors import UsageError
from pyromv.cli.train import run

TINY = ["trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4", "data.hidden_dim=16",
        "evaluation.num_particles=4", "evaluation.max_rows=10",
        "evaluation.joint_samples=10", "evaluation.classifier.epochs=1", "evaluation.fid=false",
        "evaluation.conditional=false"]


def _config(*overrides):
    with initialize(version_base=None):
        return compose("train", overrides=list(overrides))


def test_csv_tracking_of_a_command_line_run(tmp_path):
    pd = pytest.importorskip("pandas")
    metrics = run(_config(*TINY, "logger=csv", "evaluate=false"), "mvae", "polydigits", tmp_path)
    table = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    values = dict(zip(table.name, table.value))
    assert list(table[table.name == "train/loss"].value) == pytest.approx(
        [r["train_loss"] for r in metrics["history"]], rel=1e-12)
    assert values["result/test_elbo"] == pytest.approx(metrics["test_elbo"], rel=1e-12)
    assert values["result/epochs"] == 1
    hparams = json.loads((tmp_path / "csv" / "hparams.json").read_text())
    assert hparams["model"]["latent_dim"] == 4 and hparams["logger"] == "csv"


def test_tensorboard_tracking_logs_the_run_pictures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = run(_config(*TINY, "logger=tensorboard", "+logger_kwargs.every_n_steps=0"), "mvae", "polydigits",
                  tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    pictures = {p.stem for p in tmp_path.glob("*.png")} | {f"eval/{p.stem}" for p in (tmp_path / "eval").glob("*.png")}
    assert {"cross_generation", "eval/cross_generation", "eval/coherence"} <= pictures
    assert images == pictures
    assert "train/loss_step" not in events.Tags()["scalars"]
    assert events.Scalars("eval/joint_coherence")[0].value == pytest.approx(metrics["evaluation"]["joint_coherence"])
    assert events.Scalars("eval/log_likelihood/mean")[0].value == pytest.approx(
        metrics["evaluation"]["log_likelihood"]["mean"], rel=1e-6)


@pytest.mark.parametrize(("overrides", "match"), [
    (["logger=wandb"], "logger=wandb: no such logger; choose from none, csv, mlflow, tensorboard"),
    (["logger=csv", "+logger_kwargs.colour=red"], "logger=csv: .*colour.*may set every_n_steps"),
    (["logger=csv", "+logger_kwargs.every_n_steps=-2"], "every_n_steps must be an int >= 0"),
    (["+logger_kwargs.every_n_steps=2"], "but logger=none"),
])
def test_bad_logger_options_are_refused_before_training(tmp_path, overrides, match):
    with pytest.raises(UsageError, match=match):
        run(_config(*TINY, *overrides), "mvae", "polydigits", tmp_path)
    assert not (tmp_path / "checkpoint").exists()
