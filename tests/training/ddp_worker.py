"""Train tiny models for a few SGD steps, alone or as one rank of ``torchrun`` (used by
test_distributed.py); writes each model's final parameters and history to ``--out.<model>.pt``
and ``.json`` (rank 0).

Reparameterised draws use *row-keyed* noise: ``Normal``/``Laplace.rsample`` are replaced by
``loc + scale * sin(3 loc + 1/2)``, a fixed function of the row's own location, so a row gets the
same draw whichever process (and whichever position in a shard) scores it. With the torch RNG the
draws of a row would depend on the rows drawn before it in the same process, and one process on
the concatenated batch could not be matched by two processes on its halves. Any fixed noise
gives an exact identity for the gradient of the summed loss, which is what is tested.
"""

from __future__ import annotations

import argparse
import json

import torch

from pyromv.data import PolyDigits, mcar
from pyromv.models import get_model_class
from pyromv.training import Trainer, TrainerConfig


def _row_keyed_rsample(self, sample_shape=torch.Size()):
    shape = self._extended_shape(sample_shape)
    loc, scale = self.loc.expand(shape), self.scale.expand(shape)
    return loc + scale * torch.sin(3.0 * loc.detach() + 0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mvae")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=33)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.distributions.Normal.rsample = _row_keyed_rsample
    torch.distributions.Laplace.rsample = _row_keyed_rsample

    source = PolyDigits(hidden_dim=8)
    data = mcar(source.load("train"), 0.4, seed=1)  # rows with missing modalities: unused encoders
    train, val = data.subset(torch.arange(args.rows)), data.subset(torch.arange(args.rows, args.rows + 10))
    main_process = True
    for name in args.model.split(","):
        torch.manual_seed(0)
        config_class = get_model_class(name).config_class
        options = {"mvae": {"objective": "elbo"}, "mmvae": {"objective": "iwae", "num_particles": 2}}[name]
        model = get_model_class(name)(source.modalities(), config_class(latent_dim=3, **options))
        trainer = Trainer(
            model,
            optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
            config=TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, val_fraction=0.0, progress=False,
                                 divergence_threshold=0.0, num_workers=args.workers),
        )
        history = trainer.fit(train, val)
        main_process = trainer.is_main_process
        if main_process:
            out = f"{args.out}.{name}"
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out + ".pt")
            with open(out + ".json", "w") as f:
                json.dump({"history": history, "world": None if trainer._dist is None else trainer._dist[1]}, f)
    if torch.distributed.is_initialized():  # leave together: a rank exiting first can abort the other's gloo
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

if __name__ == "__main__":
    main()
