"""``pyromv-prepare``: write a data source once as a prepared, memory-mappable folder.

``pyromv-prepare data=polyfashion out=/data/polyfashion dtype=uint8`` loads the source's splits
(the same ``data`` config group as ``pyromv-train``), optionally drops modalities at random from
the training split (``missing_rate``), and writes them with
:func:`pyromv.data.prepared.write_prepared` (atomically: a half-written folder never appears).
``pyromv-train data=prepared data.path=/data/polyfashion missing_rate=0`` then trains from it
without loading it into memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from ..data.missingness import mcar
from ..data.prepared import DTYPES, write_prepared
from .config import DATA_SOURCES, register_configs
from .errors import UsageError, job_errors, options, run_cli


@dataclass
class PrepareJob:
    """``pyromv-prepare``: write ``data`` as a prepared folder.

    Attributes
    ----------
    out : str
        The folder to write (refused if it exists, unless ``overwrite=true``).
    dtype : str
        ``auto`` (bytes stay bytes, floats float32), ``uint8`` (floats in [0, 1] quantized to
        ``round(255 x)``: a quarter of the disk, an error of at most 1/510) or ``float32``.
    splits : list of str
        The splits to write.
    missing_rate, missing_seed : float, int
        MCAR rate of every modality in the training split (as ``pyromv-train``; 0: none), baked
        into the masks.
    overwrite : bool
    progress : bool
    """

    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"data": "polydigits"}])
    data: Any = MISSING
    out: str = MISSING
    dtype: str = "auto"
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    missing_rate: float = 0.0
    missing_seed: int = 0
    overwrite: bool = False
    progress: bool = True


register_configs()
ConfigStore.instance().store(name="prepare", node=PrepareJob)


def prepare(cfg: DictConfig, data_name: str) -> Path:
    """Load the configured source and write it; returns the folder."""
    if data_name not in DATA_SOURCES or data_name == "prepared":
        raise UsageError(f"data={data_name}: choose a source to prepare from "
                         f"{', '.join(sorted(set(DATA_SOURCES) - {'prepared'}))}")
    if cfg.dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if not 0.0 <= cfg.missing_rate <= 1.0:
        raise UsageError(f"missing_rate must be in [0, 1], got {cfg.missing_rate}")
    out = Path(cfg.out).expanduser()
    if out.exists() and not cfg.overwrite:
        raise UsageError(f"out={out} exists; choose another folder or pass overwrite=true")
    with options(f"data={data_name}"):
        source = OmegaConf.to_object(cfg.data)
        source.modalities()
        splits = {}
        for split in cfg.splits:
            ds = source.load(split)
            if split == "train" and cfg.missing_rate > 0:
                ds = mcar(ds, cfg.missing_rate, seed=cfg.missing_seed)
            splits[split] = ds
    described = {"name": data_name, "config": asdict(source) if is_dataclass(source) else None,
                 "missing_rate": cfg.missing_rate, "missing_seed": cfg.missing_seed}
    with options("prepare"):
        return write_prepared(out, splits, dtype=cfg.dtype, source=described, overwrite=cfg.overwrite,
                              progress=cfg.progress)


@hydra.main(version_base=None, config_name="prepare")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra task of ``pyromv-prepare``."""
    with job_errors():
        data_name = HydraConfig.get().runtime.choices["data"]
        out = prepare(cfg, data_name)
        print(f"prepared {data_name} in {out} (pyromv-train data=prepared data.path={out})")


def main() -> None:
    """``pyromv-prepare``: a user error ends in one line and exit status 2."""
    run_cli("pyromv-prepare", hydra_main)


if __name__ == "__main__":
    main()
