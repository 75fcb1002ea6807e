"""Sharing trained models on the Hugging Face Hub.

A shared model is the folder :func:`~pyromv.models.save_model` writes (``config.json`` and
``model.safetensors``: JSON and plain tensors, so loading one runs no code of its author) plus a
model card ``README.md``: YAML front matter (``library_name: pyromv``, tags, licence) and a page
with the model, its modalities, its metrics, its data, the command that trained it and how to load
it. :func:`push_to_hub` uploads it; ``load_model("hf://owner/name[@revision]")`` downloads
``config.json`` and ``model.safetensors`` only (``huggingface_hub.snapshot_download``, into the
usual cache; ``HF_HUB_OFFLINE=1`` reads the cache alone) and rebuilds the model.

Needs the ``hub`` extra (``pip install 'pyromv[hub]'``) to upload or download;
:func:`save_for_hub` and :func:`model_card` need nothing beyond pyromv.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .models.base import MultimodalVAE
from .models.io import CONFIG_NAME, WEIGHTS_NAME, save_model

__all__ = ["HUB_PREFIX", "hub_folder", "model_card", "parse_hub_path", "push_to_hub", "save_for_hub"]

#: how :func:`~pyromv.models.load_model` recognises a Hub repository
HUB_PREFIX = "hf://"
CARD_NAME = "README.md"


def _hub():
    try:
        import huggingface_hub
    except ImportError as err:
        raise ImportError("sharing on the Hugging Face Hub needs the 'huggingface_hub' package: "
                          "pip install 'pyromv[hub]'") from err
    return huggingface_hub


def parse_hub_path(path: str) -> tuple[str, str | None]:
    """``"hf://owner/name@revision"`` -> ``("owner/name", "revision")`` (revision None if absent)."""
    if not path.startswith(HUB_PREFIX):
        raise ValueError(f"{path!r} is not a Hub path: expected {HUB_PREFIX}owner/name[@revision]")
    repo_id, _, revision = path[len(HUB_PREFIX):].partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (_ and not revision):
        raise ValueError(f"{path!r} is not a Hub path: expected {HUB_PREFIX}owner/name[@revision]")
    return repo_id, revision or None


def hub_folder(path: str) -> Path:
    """The local folder of ``hf://owner/name[@revision]``: ``config.json`` and
    ``model.safetensors`` downloaded into (or, offline, found in) the Hugging Face cache."""
    repo_id, revision = parse_hub_path(path)
    hub = _hub()
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = hub.snapshot_download(repo_id, revision=revision, repo_type="model",
                                       allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    except LocalEntryNotFoundError as err:
        cache = constants.HF_HUB_CACHE
        if getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)():
            raise FileNotFoundError(
                f"{path} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: load it once "
                "online (unset HF_HUB_OFFLINE) or point HF_HUB_CACHE at a cache that holds it") from err
        raise FileNotFoundError(f"{path} could not be downloaded and is not in the cache ({cache}): {err}") from err
    return Path(folder)


def _number(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The table of a model card: (metric, value) from ``pyromv-train``'s or ``pyromv-eval``'s
    ``metrics.json`` (the test ELBO, log-likelihoods with their standard errors, coherence, FID,
    classifier accuracy, clustering)."""
    rows: list[tuple[str, str]] = []
    if isinstance(metrics.get("test_elbo"), (int, float)):
        rows.append(("test ELBO (nats per row)", _number(float(metrics["test_elbo"]))))
    evaluation = metrics.get("evaluation") if isinstance(metrics.get("evaluation"), Mapping) else metrics
    ll = evaluation.get("log_likelihood")
    if isinstance(ll, Mapping) and "mean" in ll:
        rows.append((f"test log-likelihood (K={ll.get('num_particles')}, {ll.get('rows')} rows)",
                     f"{_number(ll['mean'])} ± {_number(ll.get('stderr', float('nan')))}"))
    for m, c in (evaluation.get("conditional_log_likelihood") or {}).items():
        rows.append((f"log p({m} | {'+'.join(c.get('given') or [])})",
                     f"{_number(c['mean'])} ± {_number(c.get('stderr', float('nan')))}"))
    for k, v in ((evaluation.get("coherence") or {}).get("by_size") or {}).items():
        rows.append((f"cross-modal coherence, {k} given", _number(v)))
    if isinstance(evaluation.get("joint_coherence"), (int, float)):
        rows.append(("joint coherence", _number(evaluation["joint_coherence"])))
    for m, scores in (evaluation.get("fid") or {}).items():
        for k, v in scores.items():
            rows.append((f"FID {m} ({k.replace('_', ' ')})", _number(v)))
    for m, v in (evaluation.get("classifier_accuracy") or {}).items():
        rows.append((f"classifier accuracy {m}", _number(v)))
    clustering = evaluation.get("clustering") or {}
    if "nmi" in clustering:
        rows.append(("k-means on latent means: NMI / ARI", f"{_number(clustering['nmi'])} / "
                                                             f"{_number(clustering['ari'])}"))
    return rows


def _data_text(data: str | Mapping[str, Any]) -> str:
    if isinstance(data, Mapping):
        return "\n".join(f"- {k}: `{json.dumps(v, default=str)}`" for k, v in data.items())
    return str(data)


def model_card(
    model: MultimodalVAE,
    *,
    repo_id: str | None = None,
    metrics: Mapping[str, Any] | str | os.PathLike | None = None,
    data: str | Mapping[str, Any] | None = None,
    command: str | None = None,
    license: str | None = None,  # noqa: A002  (the Hub's metadata key)
    tags: Sequence[str] = (),
) -> str:
    """The text of a model card ``README.md``: YAML front matter and a Markdown page.

    ``metrics`` is a dictionary or the path of a ``metrics.json`` written by ``pyromv-train`` or
    ``pyromv-eval``; ``data`` a name or a mapping of the data set's options; ``command`` the
    command line that trained the model.
    """
    if metrics is not None and not isinstance(metrics, Mapping):
        metrics = json.loads(Path(metrics).read_text())
    meta: dict[str, Any] = {"library_name": "pyromv",
                            "tags": list(dict.fromkeys(["pyromv", "pyro", "multimodal-vae", model.name, *tags]))}
    if license:
        meta["license"] = license
    load_from = f"hf://{repo_id}" if repo_id else "hf://<owner>/<name>"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {model.name} ({type(model).__name__}) — a pyromv multimodal VAE", "",
             f"A `{model.name}` model of pyromv (multimodal variational autoencoders in Pyro) with a "
             f"{model.config.latent_dim}-dimensional latent space; it encodes any subset of its modalities.", "",
             "## Modalities", "", "| modality | shape | likelihood | encoder | decoder |", "|---|---|---|---|---|"]
    for m in model.modalities:
        d = m.to_dict()
        lines.append(f"| {d['name']} | {tuple(d['shape'])} | {d['likelihood']} | {d['encoder']['name']} | "
                     f"{d['decoder']['name']} |")
    lines += ["", "Options: `" + json.dumps(model.describe()["config"], sort_keys=True) + "`", ""]
    rows = metric_rows(metrics) if metrics else []
    if rows:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if data is not None:
        lines += ["## Data", "", _data_text(data), ""]
    if command:
        lines += ["## Training", "", "```bash", command, "```", ""]
    lines += ["## How to load", "", "```python", "from pyromv.models import load_model", "",
              f'model = load_model("{load_from}")   # config.json + model.safetensors: no code is run', "```", "",
              f"Needs `pip install 'pyromv[hub]'`. The files `{CONFIG_NAME}` (what to build) and `{WEIGHTS_NAME}` "
              "(the weights) are all there is.", ""]
    return "\n".join(lines)


def save_for_hub(model: MultimodalVAE, folder: str | os.PathLike, **card: Any) -> Path:
    """Write what :func:`push_to_hub` uploads into ``folder``: ``config.json``,
    ``model.safetensors`` and the model card ``README.md`` (``card``: :func:`model_card`'s options)."""
    folder = save_model(model, folder)
    (folder / CARD_NAME).write_text(model_card(model, **card))
    return folder


def push_to_hub(
    model: MultimodalVAE,
    repo_id: str,
    *,
    metrics: Mapping[str, Any] | str | os.PathLike | None = None,
    data: str | Mapping[str, Any] | None = None,
    command: str | None = None,
    license: str | None = None,  # noqa: A002
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload pyromv model",
) -> Any:
    """Upload ``model`` with its card to the Hub repository ``repo_id`` (``owner/name``, created
    if needed); returns ``huggingface_hub``'s commit information. ``token`` defaults to the
    logged-in one (``hf auth login`` or ``HF_TOKEN``)."""
    hub = _hub()
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyromv-hub-") as tmp:
        save_for_hub(model, tmp, repo_id=repo_id, metrics=metrics, data=data, command=command, license=license)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", commit_message=commit_message)
