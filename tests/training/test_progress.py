"""The progress bar names the objectives whose values it shows."""

import torch

from pyromv.data import Modality, MultimodalDataset
from pyromv.infer import ELBO, StratifiedELBO, StratifiedIWAE
from pyromv.models import MMVAE, MMVAEConfig
from pyromv.training import Trainer, TrainerConfig
from pyromv.training.progress import objective_label, progress_text

MLP = {"name": "mlp", "kwargs": {"hidden_dims": [4]}}
MODS = [Modality("a", (3,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP),
        Modality("b", (2,), "normal", {"scale": 0.5}, encoder=MLP, decoder=MLP)]


def test_objective_labels_name_the_bound_and_its_options():
    assert objective_label(ELBO()) == "ELBO"
    assert objective_label(ELBO(beta=2.5)) == "ELBO(beta=2.5)"
    assert objective_label(StratifiedIWAE(num_particles=10, gradient="dreg")) == "StratifiedIWAE(K=10, dreg)"
    record = {"epoch": 3, "stage": "joint", "train_loss": 123.456, "val_loss": 120.1}
    assert progress_text(record, StratifiedIWAE(num_particles=10), StratifiedELBO()) == (
        "stage joint | train -StratifiedIWAE(K=10) 123.46 | val -StratifiedELBO 120.10")
    assert progress_text({"train_loss": 1.0}, ELBO(), ELBO()) == "train -ELBO 1.00"


def test_the_trainer_bar_shows_the_model_objectives(capfd):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = MultimodalDataset(MODS, {"a": torch.randn(20, 3, generator=g), "b": torch.randn(20, 2, generator=g)})
    model = MMVAE(MODS, MMVAEConfig(latent_dim=2, num_particles=3))
    Trainer(model, config=TrainerConfig(epochs=1, batch_size=10, val_fraction=0.2, progress=True)).fit(data)
    err = capfd.readouterr().err
    assert "train -StratifiedIWAE(K=3) " in err and " | val -StratifiedELBO " in err
