"""MultiVae's side of the side-by-side benchmark (run by ``python -m benchmarks.side_by_side``).

Runs in MultiVae's own virtualenv (``pip install multivae==1.0.3``), so it imports nothing from
pyromv or Pyro. It reads the setting written by the orchestrator, builds MultiVae's model on
networks identical to pyromv's (same layers and sizes), trains it with MultiVae's own trainer and
times its valid likelihood estimator (``LikelihoodsEvaluator`` with the paper implementation
where MultiVae has one: the unified one of MMVAE and MoPoE draws every sample from one expert and
weights it by the whole mixture, which is not an importance-sampling estimate).

Usage: ``python multivae_worker.py SETTING_JSON MODEL OUTPUT_JSON``
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
import time
import warnings

import torch
from torch import nn


def _peak_reset() -> float:
    open("/proc/self/clear_refs", "w").write("5")  # Linux: reset VmHWM to the current RSS
    return _status("VmRSS:")


def _status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024  # MiB
    raise KeyError(key)


def _mlp(sizes: list[int], final: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def main() -> None:
    setting_path, model_name, out_path = sys.argv[1:4]
    s = json.loads(open(setting_path).read())
    torch.set_num_threads(s["threads"])
    torch.manual_seed(s["seed"])
    warnings.simplefilter("ignore")
    import multivae
    from multivae.data.datasets.base import MultimodalBaseDataset
    from multivae.metrics import LikelihoodsEvaluator, LikelihoodsEvaluatorConfig
    from multivae.models import JMVAE, MMVAE, MVAE, JMVAEConfig, MMVAEConfig, MoPoE, MoPoEConfig, MVAEConfig
    from multivae.models.nn.base_architectures import BaseJointEncoder
    from multivae.trainers import BaseTrainer, BaseTrainerConfig
    from multivae.trainers.base.callbacks import TrainingCallback
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder

    D = s["latent_dim"]
    shape = tuple(s["shape"])
    width = math.prod(shape)

    class Encoder(BaseEncoder):  # pyromv's "mlp" encoder: body, then one linear layer to (loc, raw scale)
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.latent_dim = D
            self.body = _mlp([width, *s["encoder_hidden"]], final=True)
            self.head = nn.Linear(s["encoder_hidden"][-1], 2 * D)

        def forward(self, x):
            loc, log_var = self.head(self.body(x.reshape(x.shape[0], -1))).chunk(2, -1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    class Decoder(BaseDecoder):  # pyromv's "mlp" decoder
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = _mlp([D, *s["decoder_hidden"], width], final=False)

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z).reshape(z.shape[:-1] + shape))

    class JointEncoder(BaseJointEncoder):  # pyromv's JMVAE joint encoder: an MLP on the concatenation
        def __init__(self, names: list[str]) -> None:
            BaseJointEncoder.__init__(self)
            self.latent_dim = D
            self.names = names
            self.body = _mlp([width * len(names), *s["joint_hidden"]], final=True)
            self.head = nn.Linear(s["joint_hidden"][-1], 2 * D)

        def forward(self, x: dict):
            h = torch.cat([x[m].reshape(x[m].shape[0], -1) for m in self.names], -1)
            loc, log_var = self.head(self.body(h)).chunk(2, -1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    data = torch.load(s["data"], weights_only=True)
    names = list(data["train"])
    train = MultimodalBaseDataset(data={m: data["train"][m] for m in names}, labels=data["train_labels"])
    test = MultimodalBaseDataset(data={m: data["test"][m][: s["nll_rows"]] for m in names},
                                 labels=data["test_labels"][: s["nll_rows"]])
    common = dict(n_modalities=len(names), latent_dim=D, input_dims={m: shape for m in names},
                  decoders_dist={m: "normal" for m in names},
                  decoder_dist_params={m: {"scale": s["likelihood_scale"]} for m in names})
    encoders = {m: Encoder() for m in names}
    decoders = {m: Decoder() for m in names}
    if model_name == "mvae":
        model = MVAE(MVAEConfig(**common, use_subsampling=True, k=0), encoders, decoders)
    elif model_name == "mmvae":
        model = MMVAE(MMVAEConfig(**common, K=s["mmvae_K"]), encoders, decoders)
    elif model_name == "mopoe":
        model = MoPoE(MoPoEConfig(**common), encoders, decoders)
    elif model_name == "jmvae":
        model = JMVAE(JMVAEConfig(**common, alpha=s["jmvae_alpha"]), encoders, decoders,
                      joint_encoder=JointEncoder(names))
    else:
        raise ValueError(f"MultiVae has no model {model_name!r} in this benchmark")

    epoch_seconds: list[float] = []

    class Timer(TrainingCallback):
        def on_epoch_begin(self, training_config, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, training_config, **kwargs):
            epoch_seconds.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        config = BaseTrainerConfig(output_dir=tmp, per_device_train_batch_size=s["batch_size"],
                                   num_epochs=s["epochs"], learning_rate=s["lr"], no_cuda=True, seed=s["seed"])
        trainer = BaseTrainer(model, train, training_config=config, callbacks=[Timer()])
        trainer.train()
    model = trainer._best_model if hasattr(trainer, "_best_model") else model
    model.eval()

    result = {"library": f"multivae {multivae.__version__ if hasattr(multivae, '__version__') else '1.0.3'}",
              "model": model_name, "epoch_seconds": epoch_seconds,
              "samples_per_second": len(train) / statistics.median(epoch_seconds), "likelihood": {}}
    def nll(dataset, K: int) -> float:
        config = LikelihoodsEvaluatorConfig(num_samples=K, batch_size_k=100, unified_implementation=False)
        with torch.no_grad():
            return float(LikelihoodsEvaluator(model, dataset, eval_config=config).joint_nll())

    warm = MultimodalBaseDataset(data={m: v[:8] for m, v in test.data.items()}, labels=test.labels[:8])
    nll(warm, min(s["K"]))  # first-call costs (imports, kernels) stay out of the timings
    for K in s["K"]:
        torch.manual_seed(s["seed"])
        before = _peak_reset()
        start = time.perf_counter()
        value = nll(test, K)
        seconds = time.perf_counter() - start
        result["likelihood"][str(K)] = {"seconds": seconds, "peak_mib": _status("VmHWM:") - before,
                                        "log_likelihood": -value, "rows": len(test)}
    open(out_path, "w").write(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
