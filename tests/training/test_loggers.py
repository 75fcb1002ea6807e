"""Experiment tracking: what each backend wrote is read back with the backend's own reader
(pandas for CSV, TensorBoard's EventAccumulator, MLflow's client) and checked against the
trainer's history."""

import matplotlib
import numpy as np
import pytest
import torch

from pyromv.data import Modality, MultimodalDataset, mcar
from pyromv.models import MVAE, MVAEConfig
from pyromv.training import Trainer, TrainerConfig
from pyromv.training.loggers import CSVLogger, build_logger, flatten_metrics

matplotlib.use("Agg")

MLP = {"name": "mlp", "kwargs": {"hidden_dims": [8]}}
MODS = [
    Modality("a", (3,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
    Modality("b", (2,), "categorical", {"num_categories": 3}, encoder=MLP, decoder=MLP),
]
N, BS, EPOCHS = 30, 8, 2  # 24 training rows after the 20% validation split: 3 steps per epoch


def _data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, 2, generator=g)
    data = {"a": z @ torch.randn(2, 3, generator=g), "b": (z > 0).long()}
    return mcar(MultimodalDataset(MODS, data), 0.3, seed=0)


def _train(logger):
    torch.manual_seed(0)
    model = MVAE(MODS, MVAEConfig(latent_dim=2))
    config = TrainerConfig(epochs=EPOCHS, batch_size=BS, val_fraction=0.2, progress=False)
    trainer = Trainer(model, config=config, callbacks=[logger])
    history = trainer.fit(_data())
    return trainer, history


def _png(path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.imshow(np.eye(4))
    fig.savefig(path)
    plt.close(fig)
    return path


def _step_losses_match(history, steps):
    """Step losses are per row: weighted by their batch's rows they average to the epoch's loss."""
    rows = [BS, BS, 24 - 2 * BS]
    for epoch, record in enumerate(history):
        chunk = steps[epoch * 3:(epoch + 1) * 3]
        assert len(chunk) == 3
        assert sum(v * r for v, r in zip(chunk, rows)) / 24 == pytest.approx(record["train_loss"], rel=1e-6)


def test_flatten_metrics_keeps_finite_numbers_only():
    nested = {"a": 1, "b": {"c": 2.5, "d": "text", "e": True, "f": float("nan")}, "g m+n": 3, "h": [1, 2]}
    assert flatten_metrics(nested, "eval/") == {"eval/a": 1.0, "eval/b/c": 2.5, "eval/g m_n": 3.0}


def test_csv_logger_writes_step_and_epoch_losses_and_hparams(tmp_path):
    pd = pytest.importorskip("pandas")
    with CSVLogger(tmp_path) as logger:
        logger.log_hparams({"model": {"latent_dim": 2}, "lr": 1e-3})
        trainer, history = _train(logger)
        logger.log_metrics({"eval/ll": -3.5}, step=trainer.epoch)
    table = pd.read_csv(tmp_path / "metrics.csv")
    epochs = table[table.name == "train/loss"]
    assert list(epochs.step) == [1, 2]
    assert list(epochs.value) == pytest.approx([r["train_loss"] for r in history], rel=1e-12)
    val = table[table.name == "val/loss"]
    assert list(val.value) == pytest.approx([r["val_loss"] for r in history], rel=1e-12)
    steps = table[table.name == "train/loss_step"]
    assert list(steps.step) == list(range(1, 7))
    _step_losses_match(history, list(steps.value))
    assert table[table.name == "eval/ll"].value.item() == -3.5
    assert (tmp_path / "hparams.json").read_text().count("latent_dim") == 1


def test_every_n_steps_thins_the_step_losses(tmp_path):
    with CSVLogger(tmp_path, every_n_steps=2) as logger:
        _train(logger)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[2] for line in lines if line.startswith("train/loss_step")] == ["2", "4", "6"]
    with pytest.raises(ValueError, match="every_n_steps"):
        CSVLogger(tmp_path, every_n_steps=-1)


def test_tensorboard_logger_scalars_images_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    with build_logger("tensorboard", tmp_path) as logger:
        logger.log_hparams({"model": {"latent_dim": 2, "objective": "subsampled"}, "lr": 1e-3})
        trainer, history = _train(logger)
        logger.log_metrics({"eval/log_likelihood/mean": -4.25}, step=trainer.epoch)
        logger.log_image("eval/cross_generation", _png(tmp_path / "grid.png"), step=trainer.epoch)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    epoch = events.Scalars("train/loss")
    assert [e.step for e in epoch] == [1, 2]
    assert [e.value for e in epoch] == pytest.approx([r["train_loss"] for r in history], rel=1e-6)
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx([r["val_loss"] for r in history], rel=1e-6)
    steps = events.Scalars("train/loss_step")
    assert [e.step for e in steps] == list(range(1, 7))
    _step_losses_match(history, [e.value for e in steps])
    assert events.Scalars("eval/log_likelihood/mean")[0].value == -4.25
    image = events.Images("eval/cross_generation")[0]
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and image.width == 20
    content = events.PluginTagToContent("hparams")
    start = [plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in content.values()]
    hparams = next(s.hparams for s in start if s.hparams)
    assert hparams["model.latent_dim"].number_value == 2
    assert hparams["model.objective"].string_value == "subsampled"


def test_mlflow_logger_metrics_params_artifacts_in_a_local_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with build_logger("mlflow", tmp_path, experiment="tests", run_name="tiny") as logger:
        logger.log_hparams({"model": {"latent_dim": 2}, "lr": 1e-3})
        trainer, history = _train(logger)
        logger.log_metrics({"eval/log_likelihood/mean": -4.25}, step=trainer.epoch)
        logger.log_image("eval/cross_generation", _png(tmp_path / "grid.png"))
    assert (tmp_path / "mlflow.db").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params == {"model.latent_dim": "2", "lr": "0.001"}
    epoch = client.get_metric_history(logger.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in epoch) == [
        (r["epoch"], pytest.approx(r["train_loss"], rel=1e-12)) for r in history]
    steps = sorted(client.get_metric_history(logger.run_id, "train/loss_step"), key=lambda m: m.step)
    assert [m.step for m in steps] == list(range(1, 7))
    _step_losses_match(history, [m.value for m in steps])
    assert run.data.metrics["eval/log_likelihood/mean"] == -4.25
    found = {a.path for a in client.list_artifacts(logger.run_id)}
    assert found == {"config.json", "images"}
    assert [a.path for a in client.list_artifacts(logger.run_id, "images/eval")] == ["images/eval/grid.png"]
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [logger.run_id]


def test_unknown_logger_and_missing_extra_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="choose from none, csv, mlflow, tensorboard"):
        build_logger("wandb", tmp_path)
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ImportError, match=r"pip install 'pyromv\[tensorboard\]'"):
        build_logger("tensorboard", tmp_path)
