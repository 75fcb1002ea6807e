"""``pyromv-train``: train a multimodal VAE on partially observed data from the command line.

With no arguments it trains MVAE on PolyDigits with 30% of the training set's modalities
missing at random, prints the test ELBO and writes to Hydra's run directory:
``checkpoint/`` (last and best), ``model/`` (the trained model), ``metrics.json`` and
``cross_generation.png`` / ``samples.png``; with ``sampler=gmm|maf|iaf|prior`` it then fits that
latent sampler (``sampler/``, ``sampler_generations.png``). Override anything, e.g.
``pyromv-train model.latent_dim=8 trainer.epochs=20 missing_rate=0.5``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
import matplotlib.pyplot as plt
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..data.missingness import mcar
from ..metrics.evaluate import evaluate, format_summary
from ..metrics.plots import generated_image_modalities, plot_cross_generation, plot_samples
from ..models import get_model_class, save_model
from ..samplers import get_sampler_class
from ..samplers.job import fit_sampler_job
from ..training import Trainer
from .config import DATA_SOURCES, register_configs

register_configs()


def run(cfg: DictConfig, model_name: str, data_name: str, out: Path) -> dict[str, Any]:
    """Train and evaluate as configured; write the outputs to ``out``; return the metrics."""
    start = time.perf_counter()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if cfg.sampler != "none":
        get_sampler_class(cfg.sampler)  # an unknown name fails before training, not after
    source = OmegaConf.to_object(cfg.data)
    model_config = OmegaConf.to_object(cfg.model)
    trainer_config = OmegaConf.to_object(cfg.trainer)
    train = source.load("train")
    test = source.load("test")
    if cfg.missing_rate > 0:
        train = mcar(train, cfg.missing_rate, seed=cfg.missing_seed)
    torch.manual_seed(trainer_config.seed)  # the networks' initial weights follow trainer.seed too
    model = get_model_class(model_name)(source.modalities(), model_config)
    trainer = Trainer(model, config=trainer_config, checkpoint_dir=out / "checkpoint")
    history = trainer.fit(train)
    test_loss = trainer.evaluate(test)
    save_model(model, out / "model")
    metrics = {
        "model": model_name,
        "data": data_name,
        "test_elbo": -test_loss,
        "test_rows": len(test),
        "train_rows": len(train),
        "train_observed_fraction": train.observed_fraction(),
        "epochs": trainer.epoch,
        "stopped_early": trainer.stopped_early,
        "best_val_loss": trainer.best_val,
        "seconds": time.perf_counter() - start,
        "history": history,
    }
    if cfg.sampler != "none":
        metrics["sampler"] = fit_sampler_job(
            cfg.sampler, OmegaConf.to_container(cfg.sampler_kwargs), model, train, test, out,
            n_plot=cfg.plot_rows, progress=trainer_config.progress,
        )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if generated_image_modalities(model):
        batch = test.batch()
        plt.close(plot_cross_generation(model, batch, n=cfg.plot_rows, path=out / "cross_generation.png"))
        plt.close(plot_samples(model, n=cfg.plot_rows, path=out / "samples.png"))
    if cfg.evaluate:  # what pyromv-eval does, on a small budget; classifiers see complete data
        metrics["evaluation"] = evaluate(
            model, test, source.load("train"), OmegaConf.to_object(cfg.evaluation), out_dir=out / "eval"
        )
    return metrics


@hydra.main(version_base=None, config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    data_name = choices["data"]
    if data_name not in DATA_SOURCES:
        raise ValueError(f"unknown data source {data_name!r}; available: {sorted(DATA_SOURCES)}")
    out = Path(hydra_cfg.runtime.output_dir)
    metrics = run(cfg, choices["model"], data_name, out)
    print(f"test ELBO: {metrics['test_elbo']:.3f} nats per row "
          f"({metrics['model']} on {metrics['data']}, {metrics['epochs']} epochs, "
          f"{metrics['seconds']:.0f} s)")
    if "sampler" in metrics:
        fitted = metrics["sampler"]
        print(f"sampler {fitted['name']}: test codes' log-density "
              f"{fitted['test_log_density']['log_density']:.2f} "
              f"(prior {fitted['prior_test_log_density']['log_density']:.2f})")
    if "evaluation" in metrics:
        print(format_summary(metrics["evaluation"]))
    print(f"outputs: {out}")


if __name__ == "__main__":
    main()
