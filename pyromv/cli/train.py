"""``pyromv-train``: train a multimodal VAE on partially observed data from the command line.

With no arguments it trains MVAE on PolyDigits with 30% of the training set's modalities
missing at random, prints the test ELBO and writes to Hydra's run directory:
``checkpoint/`` (last and best), ``model/`` (the trained model), ``metrics.json`` and
``cross_generation.png`` / ``samples.png``; with ``sampler=gmm|maf|iaf|prior`` it then fits that
latent sampler (``sampler/``, ``sampler_generations.png``). Override anything, e.g.
``pyromv-train model.latent_dim=8 trainer.epochs=20 missing_rate=0.5``.

Every option is checked before the data are loaded; a bad value, an unknown name or a missing
file ends in one line on stderr and exit status 2 (``--debug`` or ``HYDRA_FULL_ERROR=1`` shows
the traceback), see :mod:`pyromv.cli.errors`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import hydra
import matplotlib.pyplot as plt
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..data.dataset import MultimodalDataset, partially_observed
from ..data.missingness import feature_mcar, feature_mnar, mcar
from ..data.modality import MASK_AWARE, MISSINGNESS
from ..distributions.likelihoods import registered_likelihoods
from ..metrics.evaluate import evaluate, format_summary
from ..metrics.plots import generated_image_modalities, plot_cross_generation, plot_samples
from ..models import get_model_class, save_model
from ..samplers import build_sampler, registered_samplers
from ..samplers.job import fit_sampler_job
from ..training import Trainer
from .config import DATA_SOURCES, register_configs
from .distributed import distributed_job, is_main_process, leave_distributed_job
from .errors import UsageError, collapse, job_errors, options, run_cli
from .tracking import Tracking, check_logger, logger_options

register_configs()


def check_options(cfg: DictConfig, model_name: str, data_name: str) -> tuple[Any, Any, Any]:
    """Check every option of the job before any data is loaded; return the data source, the model
    config and the trainer config.

    A bad value, an unknown name or a refused combination raises a
    :class:`~pyromv.cli.errors.UsageError` that names the option (or its group) and what was
    expected, so that ``pyromv-train`` fails in a second rather than after loading or training.
    """
    if not 0.0 <= cfg.missing_rate <= 1.0:
        raise UsageError(f"missing_rate must be in [0, 1] (the MCAR rate of every modality), got {cfg.missing_rate}")
    if not 0.0 <= cfg.get("feature_missing_rate", 0.0) < 1.0:
        raise UsageError(f"feature_missing_rate must be in [0, 1) (the MCAR rate of every entry), "
                         f"got {cfg.feature_missing_rate}")
    if cfg.get("mask_aware", "auto") not in MASK_AWARE:
        raise UsageError(f"mask_aware must be one of {', '.join(MASK_AWARE)}, got {cfg.mask_aware!r}")
    if cfg.get("feature_missing_pattern", "mcar") not in ("mcar", "self_masking"):
        raise UsageError(f"feature_missing_pattern must be mcar or self_masking, "
                         f"got {cfg.feature_missing_pattern!r}")
    if cfg.get("missingness", "ignorable") not in MISSINGNESS:
        raise UsageError(f"missingness must be one of {', '.join(MISSINGNESS)}, got {cfg.missingness!r}")
    if cfg.num_threads < 0:
        raise UsageError(f"num_threads must be >= 0 (0 keeps torch's default), got {cfg.num_threads}")
    if cfg.plot_rows < 1:
        raise UsageError(f"plot_rows must be >= 1, got {cfg.plot_rows}")
    if data_name not in DATA_SOURCES:
        raise UsageError(f"data={data_name}: no such data source; choose from {', '.join(sorted(DATA_SOURCES))}")
    with options(f"data={data_name}"):
        source = OmegaConf.to_object(cfg.data)
        for f in dataclasses.fields(source) if dataclasses.is_dataclass(source) else ():
            value = getattr(source, f.name)
            if f.name.endswith("likelihood") and isinstance(value, str) and value not in registered_likelihoods():
                raise UsageError(
                    f"data.{f.name} must be one of {', '.join(registered_likelihoods())}, got {value!r}"
                )
        source.modalities()
    with options(f"model={model_name}"):
        model_config = OmegaConf.to_object(cfg.model)
        model_config.validate()
    with options("trainer"):
        trainer_config = OmegaConf.to_object(cfg.trainer)
    if cfg.sampler != "none":
        with options(f"sampler={cfg.sampler}"):  # the name and the options, before training
            build_sampler(cfg.sampler, **OmegaConf.to_container(cfg.sampler_kwargs))
    elif cfg.sampler_kwargs:
        raise UsageError(f"sampler_kwargs {sorted(cfg.sampler_kwargs)} given but sampler=none: "
                         f"choose a sampler ({', '.join(registered_samplers())})")
    if cfg.evaluate:
        with options("evaluation"):
            OmegaConf.to_object(cfg.evaluation).validate()
    check_logger(*logger_options(cfg))
    return source, model_config, trainer_config


def run(cfg: DictConfig, model_name: str, data_name: str, out: Path) -> dict[str, Any]:
    """Train and evaluate as configured; write the outputs to ``out``; return the metrics.
    With ``logger=...`` the run is tracked (:class:`~pyromv.cli.tracking.Tracking`)."""
    tracking = Tracking(*(logger_options(cfg) if is_main_process() else ("none", {})), out)  # rank 0 tracks
    try:
        metrics = _run(cfg, model_name, data_name, Path(out), tracking)
    except BaseException:
        tracking.close(success=False)
        raise
    tracking.close()
    return metrics


def with_missingness(cfg: DictConfig, train: MultimodalDataset, test: MultimodalDataset,
                     entries: bool = True) -> tuple[MultimodalDataset, MultimodalDataset]:
    """The training and test sets with the job's simulated missingness: ``missing_rate`` of the
    modalities in the training set, then (``entries``) ``feature_missing_rate`` of the entries in
    both, by ``feature_missing_pattern`` (seeds ``missing_seed`` and ``missing_seed + 1``)."""
    if cfg.missing_rate > 0:
        train = mcar(train, cfg.missing_rate, seed=cfg.missing_seed)
    if entries and cfg.get("feature_missing_rate", 0.0) > 0:
        drop = feature_mcar if cfg.get("feature_missing_pattern", "mcar") == "mcar" else feature_mnar
        train = drop(train, cfg.feature_missing_rate, seed=cfg.missing_seed)
        test = drop(test, cfg.feature_missing_rate, seed=cfg.missing_seed + 1)
    return train, test


def _run(cfg: DictConfig, model_name: str, data_name: str, out: Path, tracking: Tracking) -> dict[str, Any]:
    start = time.perf_counter()
    source, model_config, trainer_config = check_options(cfg, model_name, data_name)
    callbacks = tracking.open(OmegaConf.to_container(cfg, resolve=True))
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(trainer_config.seed)  # the networks' initial weights follow trainer.seed too
    with options(f"data={data_name}"):  # files not found name what is expected where
        try:
            train = source.load("train")  # the sources draw from their own generators, not torch's
            test = source.load("test")
        except FileNotFoundError as err:
            if not hasattr(source, "root"):
                raise
            raise UsageError(f"data={data_name}: {collapse(str(err))} (data.root sets the folder)") from err
    train, test = with_missingness(cfg, train, test)
    # the modality specs as the training data resolve them (mask_aware="auto": on where the data
    # have feature-level missingness), or the user's mask_aware for every modality
    setting = cfg.get("mask_aware", "auto")
    specs = [m if setting == "auto" else dataclasses.replace(m, mask_aware=setting) for m in train.modalities]
    missingness = cfg.get("missingness", "ignorable")
    if missingness != "ignorable":  # modelled where the training data miss single entries
        partial = partially_observed(train.obs_mask)
        if not any(partial.values()):
            raise UsageError(f"missingness={missingness}: no modality of the training data misses single entries "
                             "(set feature_missing_rate, or use data with missing entries)")
        specs = [dataclasses.replace(m, missingness=missingness) if partial[m.name] else m for m in specs]
    with options(f"model={model_name}"):  # the model and the trainer refuse what they cannot use
        model = get_model_class(model_name)(specs, model_config)
    with options("trainer"):
        trainer = Trainer(model, config=trainer_config, checkpoint_dir=out / "checkpoint", callbacks=callbacks)
    history = trainer.fit(train)
    if not trainer.is_main_process:  # torchrun: rank 0 evaluates, writes and reports
        return {"model": model_name, "data": data_name, "history": history, "main_process": False}
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
    tracking.log_results(metrics, step=trainer.epoch)
    return metrics


@hydra.main(version_base=None, config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra task of ``pyromv-train`` (errors as Hydra reports them; :func:`main` is the script)."""
    with job_errors():
        hydra_cfg = HydraConfig.get()
        choices = hydra_cfg.runtime.choices
        data_name = choices["data"]
        out, main_process = distributed_job(cfg, Path(hydra_cfg.runtime.output_dir))  # torchrun: rank 0's folder
        metrics = run(cfg, choices["model"], data_name, out)
        leave_distributed_job()
        if not main_process:
            return
        what = "test ELBO" if getattr(get_model_class(choices["model"]), "has_likelihood", True) else \
            "test objective (not a bound: the model has no likelihood)"
        print(f"{what}: {metrics['test_elbo']:.3f} nats per row "
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


def main() -> None:
    """``pyromv-train``: a user error ends in one line and exit status 2 (``--debug`` or
    ``HYDRA_FULL_ERROR=1``: the traceback); see :mod:`pyromv.cli.errors`."""
    run_cli("pyromv-train", hydra_main)


if __name__ == "__main__":
    main()
