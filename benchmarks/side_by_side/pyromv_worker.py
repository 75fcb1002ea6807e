"""pyromv's side of the side-by-side benchmark (run by ``python -m benchmarks.side_by_side``).

Builds the model on the same networks as MultiVae's side, trains it with pyromv's
:class:`~pyromv.training.Trainer` and times :func:`~pyromv.metrics.log_likelihood` (PSIS
k-hat included) on the same test rows.

Usage: ``python -m benchmarks.side_by_side.pyromv_worker SETTING_JSON MODEL OUTPUT_JSON``
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings

import torch

from .multivae_worker import _peak_reset, _status


def build(s: dict, model_name: str):
    """The pyromv model of the setting (same networks as MultiVae's side)."""
    from pyromv.data import Modality
    from pyromv.models import JMVAEConfig, MMVAEConfig, MoPoEConfig, MVAEConfig, get_model_class

    mods = [
        Modality(m, tuple(s["shape"]), likelihood="normal", likelihood_kwargs={"scale": s["likelihood_scale"]},
                 encoder={"name": "mlp", "kwargs": {"hidden_dims": s["encoder_hidden"]}},
                 decoder={"name": "mlp", "kwargs": {"hidden_dims": s["decoder_hidden"]}})
        for m in s["names"]
    ]
    D = s["latent_dim"]
    configs = {
        "mvae": lambda: MVAEConfig(latent_dim=D, num_random_subsets=0),
        "mmvae": lambda: MMVAEConfig(latent_dim=D, num_particles=s["mmvae_K"]),
        "mopoe": lambda: MoPoEConfig(latent_dim=D),
        "jmvae": lambda: JMVAEConfig(latent_dim=D, alpha=s["jmvae_alpha"], joint_hidden_dims=s["joint_hidden"]),
    }
    return mods, get_model_class(model_name)(mods, configs[model_name]())


def main() -> None:
    setting_path, model_name, out_path = sys.argv[1:4]
    s = json.loads(open(setting_path).read())
    torch.set_num_threads(s["threads"])
    torch.manual_seed(s["seed"])
    from pyromv.data import MultimodalDataset
    from pyromv.metrics import log_likelihood
    from pyromv.training import Trainer, TrainerConfig

    data = torch.load(s["data"], weights_only=True)
    s["names"] = list(data["train"])
    mods, model = build(s, model_name)
    train = MultimodalDataset(mods, data["train"], labels=data["train_labels"])
    test = MultimodalDataset(mods, {m: v[: s["nll_rows"]] for m, v in data["test"].items()},
                             labels=data["test_labels"][: s["nll_rows"]])
    config = TrainerConfig(epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], val_fraction=0.0,
                           seed=s["seed"], progress=False)
    history = Trainer(model, config=config).fit(train)
    epoch_seconds = [r["seconds"] for r in history]
    result = {"library": "pyromv", "model": model_name, "epoch_seconds": epoch_seconds,
              "samples_per_second": len(train) / statistics.median(epoch_seconds), "likelihood": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log_likelihood(model, test.subset(torch.arange(8)), K=min(s["K"]))  # first-call costs stay out of timings
    for K in s["K"]:
        before = _peak_reset()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # k-hat warnings: reported in the result instead
            ll = log_likelihood(model, test, K=K, seed=s["seed"])
        seconds = time.perf_counter() - start
        summary = ll.summary()
        result["likelihood"][str(K)] = {
            "seconds": seconds, "peak_mib": _status("VmHWM:") - before, "log_likelihood": ll.mean,
            "rows": len(test), "khat_above_0.7": summary["khat_fraction_above_threshold"],
        }
    open(out_path, "w").write(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
