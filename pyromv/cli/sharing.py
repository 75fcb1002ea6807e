"""``pyromv-eval run_dir=... push_to_hub=owner/name``: share an evaluated run on the Hugging Face Hub.

The model of ``run_dir/model`` goes up with a model card holding the test ELBO of the training
run, the metrics just computed, the data set's options and the ``pyromv-train`` command line that
trained it (from Hydra's ``.hydra/overrides.yaml``). See :mod:`pyromv.hub`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .errors import UsageError


def check_push(repo_id: str) -> None:
    """Refuse, before the evaluation, a malformed ``repo_id`` or a missing ``hub`` extra."""
    if importlib.util.find_spec("huggingface_hub") is None:
        raise UsageError("push_to_hub needs the 'huggingface_hub' package: pip install 'pyromv[hub]'")
    from huggingface_hub.utils import validate_repo_id

    parts = str(repo_id).split("/")
    try:
        if len(parts) != 2:
            raise ValueError("expected owner/name")
        validate_repo_id(repo_id)
    except ValueError as err:
        raise UsageError(f"push_to_hub={repo_id}: not a Hub repository id owner/name ({err})") from err


def run_card(run_dir: str | Path, data_name: str) -> dict[str, Any]:
    """The training-side facts of a run directory for a model card: ``data`` and ``command``."""
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data: dict[str, Any] = {"name": data_name}
    if "data" in cfg:
        data.update(OmegaConf.to_container(cfg.data, resolve=True))
    for key in ("missing_rate", "missing_seed"):
        if key in cfg:
            data[f"training set {key.replace('_', ' ')}"] = cfg[key]
    overrides = run_dir / ".hydra" / "overrides.yaml"
    command = None
    if overrides.is_file():
        command = " ".join(["pyromv-train", *map(str, OmegaConf.load(overrides))])
    return {"data": data, "command": command}


def push_run(run_dir: str | Path, evaluation: dict[str, Any], data_name: str, repo_id: str, *,
             private: bool = False, license: str | None = None) -> Any:  # noqa: A002
    """Upload ``run_dir/model`` with a card (the training run's test ELBO and ``evaluation``)."""
    from ..hub import push_to_hub
    from ..models import load_model

    run_dir = Path(run_dir)
    metrics: dict[str, Any] = {"evaluation": evaluation}
    trained = run_dir / "metrics.json"
    if trained.is_file():
        test_elbo = json.loads(trained.read_text()).get("test_elbo")
        if test_elbo is not None:
            metrics["test_elbo"] = test_elbo
    return push_to_hub(load_model(run_dir / "model"), repo_id, metrics=metrics, private=private, license=license,
                       **run_card(run_dir, data_name))
