"""``pyromv-eval``: evaluate a run directory written by ``pyromv-train``.

``pyromv-eval run_dir=outputs/2024-01-01/12-00-00`` loads ``run_dir/model``, rebuilds the data
source from ``run_dir/.hydra/config.yaml``, trains the per-modality classifiers on the training
split and writes ``run_dir/eval/metrics.json`` and the pictures (reconstructions, cross
generation, prior samples, latent space, coherence). It prints the classifiers' accuracy,
coherence per number of given modalities and the test log-likelihood with its standard error.
Every :class:`~pyromv.metrics.EvalConfig` field is an override, e.g.
``pyromv-eval run_dir=... num_particles=5000 max_rows=100 embedding=tsne``.

``run_dir`` is checked before Hydra creates ``run_dir/eval`` (nothing is written for a directory
that is not a training run); a user error ends in one line on stderr and exit status 2
(``--debug`` or ``HYDRA_FULL_ERROR=1`` shows the traceback), see :mod:`pyromv.cli.errors`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from ..metrics.evaluate import EvalConfig, evaluate, format_summary
from ..models import load_model
from .config import DATA_SOURCES
from .errors import UsageError, job_errors, run_cli
from .help import TEMPLATES as HELP_TEMPLATES
from .sharing import check_push, push_run

#: the resolver of ``pyromv-eval``'s ``hydra.run.dir`` (checks ``run_dir`` first)
OUTPUT_DIR_RESOLVER = "pyromv_eval_output_dir"


@dataclass
class EvalJob(EvalConfig):
    """``pyromv-eval``: the :class:`EvalConfig` options plus where the run is.

    Attributes
    ----------
    run_dir : str
        A directory written by ``pyromv-train`` (``model/`` and ``.hydra/config.yaml``).
    output : str
        Sub-directory of ``run_dir`` that receives ``metrics.json`` and the pictures.
    push_to_hub : str, optional
        After the evaluation, upload the model with a model card (these metrics, the data, the
        training command) to this Hugging Face Hub repository ``owner/name`` (:mod:`pyromv.hub`;
        ``pip install 'pyromv[hub]'``, a token from ``hf auth login`` or ``HF_TOKEN``).
    hub_private : bool
        Create the Hub repository private.
    hub_license : str, optional
        Licence in the model card's metadata (a Hub licence id such as ``apache-2.0``, ``mit``).
    """

    run_dir: str = MISSING
    output: str = "eval"
    push_to_hub: str | None = None
    hub_private: bool = False
    hub_license: str | None = None
    hydra: Any = field(default_factory=lambda: {"run": {"dir": f"${{{OUTPUT_DIR_RESOLVER}:}}"},
                                                "help": HELP_TEMPLATES["eval"]})  # --help: pyromv.cli.help


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a path, or a ``FileNotFoundError`` saying what a run directory holds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run_dir={run_dir}: no such directory; pyromv-eval needs a run directory written by pyromv-train"
        )
    for needed in ("model", ".hydra/config.yaml"):
        if not (run_dir / needed).exists():
            raise FileNotFoundError(
                f"run_dir={run_dir} holds no {needed}: pyromv-eval needs a run directory written by pyromv-train"
            )
    return run_dir


def _output_dir(*, _root_: DictConfig) -> str:
    """``hydra.run.dir`` of ``pyromv-eval``: ``run_dir/output``, once ``run_dir`` is a training run
    (Hydra resolves it before it creates the directory)."""
    if OmegaConf.is_missing(_root_, "run_dir"):
        raise UsageError("run_dir is required: pyromv-eval run_dir=<a directory written by pyromv-train>")
    try:
        run_dir = check_run_dir(_root_.run_dir)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    return str(run_dir / _root_.output)


OmegaConf.register_new_resolver(OUTPUT_DIR_RESOLVER, _output_dir, replace=True)
ConfigStore.instance().store(name="eval", node=EvalJob)


def load_source(run_dir: str | Path) -> tuple[Any, str]:
    """The data-source config of a training run and its name (a key of ``DATA_SOURCES``)."""
    run_dir = Path(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: pyromv-eval needs a run directory written by pyromv-train"
        )
    cfg = OmegaConf.load(config_path)
    name = None
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        name = json.loads(metrics_path.read_text()).get("data")
    hydra_path = run_dir / ".hydra" / "hydra.yaml"
    if name is None and hydra_path.is_file():
        name = OmegaConf.select(OmegaConf.load(hydra_path), "hydra.runtime.choices.data")
    if name is None:
        raise ValueError(f"cannot tell which data source {run_dir} was trained on")
    if name not in DATA_SOURCES:
        raise ValueError(f"unknown data source {name!r}; available: {sorted(DATA_SOURCES)}")
    source_cls = DATA_SOURCES[name]
    source = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(source_cls), cfg.data))
    return source, name


def run(run_dir: str | Path, config: EvalConfig, out: str | Path) -> dict[str, Any]:
    """Evaluate the run in ``run_dir``; write the metrics and pictures to ``out``."""
    config.validate()  # before the model and the data are loaded
    out = Path(out)
    run_dir = check_run_dir(run_dir)
    model = load_model(run_dir / "model")
    source, data_name = load_source(run_dir)
    shapes = {m.name: tuple(m.shape) for m in source.modalities()}
    expected = {m.name: tuple(m.shape) for m in model.modalities}
    if shapes != expected:
        raise ValueError(f"the model's modalities {expected} differ from the data's {shapes}")
    metrics = evaluate(model, source.load("test"), source.load("train"), config, out_dir=out)
    metrics = {"run_dir": str(run_dir), "model": model.name, "data": data_name, **metrics}
    path = out / "metrics.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({"run_dir": str(run_dir), "model": model.name, "data": data_name, **saved}, indent=2))
    return metrics


def _config(cfg: DictConfig) -> EvalConfig:
    job = OmegaConf.to_object(cfg)
    return EvalConfig(**{f.name: getattr(job, f.name) for f in fields(EvalConfig)})


@hydra.main(version_base=None, config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra task of ``pyromv-eval`` (errors as Hydra reports them; :func:`main` is the script)."""
    with job_errors():
        out = Path(HydraConfig.get().runtime.output_dir)
        repo_id = cfg.get("push_to_hub")
        if repo_id:
            check_push(repo_id)  # before the evaluation
        metrics = run(cfg.run_dir, _config(cfg), out)
        print(format_summary(metrics))
        print(f"outputs: {out}")
        if repo_id:
            push_run(cfg.run_dir, metrics, metrics["data"], repo_id, private=cfg.hub_private,
                     license=cfg.hub_license)
            print(f"pushed to https://huggingface.co/{repo_id} (load_model('hf://{repo_id}'))")


#: Hydra's flags that take the next argument as their value
_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--info", "-i", "--experimental-rerun")


def refuse_bare_arguments(args: list[str]) -> None:
    """A bare argument (``pyromv-eval outputs/run``) is no Hydra override: say how to call."""
    for i, arg in enumerate(args):
        if "=" in arg or arg.startswith(("-", "~")) or (i and args[i - 1] in _VALUE_FLAGS):
            continue
        if any(a.startswith("run_dir=") for a in args):
            raise UsageError(f"unexpected argument {arg!r}: options are NAME=VALUE")
        call = " ".join(f"run_dir={a}" if j == i else a for j, a in enumerate(args))
        raise UsageError(f"options are NAME=VALUE; to evaluate the run directory {arg}, call: pyromv-eval {call}")


def _main() -> None:
    refuse_bare_arguments(sys.argv[1:])
    hydra_main()


def main() -> None:
    """``pyromv-eval``: a user error ends in one line and exit status 2 (``--debug`` or
    ``HYDRA_FULL_ERROR=1``: the traceback); see :mod:`pyromv.cli.errors`."""
    run_cli("pyromv-eval", _main)


if __name__ == "__main__":
    main()
