"""Per-modality classifiers: the judges of coherence and the default features of FID."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.batch import MultimodalBatch
from ..data.dataset import MultimodalDataset

#: A classifier maps a modality tensor ``(B, *shape)`` to logits ``(B, C)``.
Classifier = Callable[[Tensor], Tensor]


class ModalityClassifier(nn.Module):
    """A small MLP ``x_m -> logits``: flatten, two hidden ReLU layers, a linear read-out.

    :meth:`features` returns the last hidden layer (the "penultimate" features used as the
    offline default feature extractor of FID).

    Parameters
    ----------
    shape : tuple of int
        Shape of one row of the modality.
    num_classes : int
    hidden_dim : int
    num_categories : int, optional
        For categorical data (token ids): each entry is one-hot encoded first.
    """

    def __init__(
        self, shape: Sequence[int], num_classes: int, hidden_dim: int = 64,
        num_categories: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = int(num_classes)
        self.num_categories = None if num_categories is None else int(num_categories)
        width = math.prod(self.shape) * (self.num_categories or 1)
        self.body = nn.Sequential(
            nn.Linear(width, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
        )
        self.head = nn.Linear(hidden_dim, num_classes)

    def _flat(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"classifier expects rows of shape {self.shape}, got {tuple(x.shape[1:])}")
        if self.num_categories is not None:
            return F.one_hot(x.long().clamp(0, self.num_categories - 1), self.num_categories).float().flatten(1)
        return x.float().flatten(1)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer, ``(B, hidden_dim)``."""
        return self.body(self._flat(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class ClassifierConfig:
    """Options of :func:`train_classifiers` (also a Hydra structured config).

    Attributes
    ----------
    epochs, batch_size, lr, weight_decay : Adam on the cross-entropy.
        Epochs, rows per step, learning rate and weight decay of Adam on the cross-entropy.
    hidden_dim : int
        Width of the two hidden layers (and of the FID features).
    seed : int
        Seeds the classifiers' initial weights and the shuffling of their batches.
    num_threads : int
        torch intra-op threads while training (restored afterwards); 0 keeps torch's setting.
        The networks are tiny: one thread is fastest, and on a busy machine several threads
        can make each step many times slower.
    """

    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    hidden_dim: int = 64
    weight_decay: float = 1e-4
    seed: int = 0
    num_threads: int = 1


def _labels(data: MultimodalDataset | MultimodalBatch) -> Tensor:
    labels = data.labels
    if labels is None:
        raise ValueError("classifiers and coherence need class labels: the data has none")
    return labels


def _rows_of(data: MultimodalDataset | MultimodalBatch, name: str) -> tuple[Tensor, Tensor]:
    batch = data.batch() if isinstance(data, MultimodalDataset) else data
    rows = batch.row_mask(name)
    return batch.data[name][rows], _labels(batch)[rows]


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifiers(
    train: MultimodalDataset,
    names: Sequence[str] | None = None,
    config: ClassifierConfig | None = None,
    num_classes: int | None = None,
    progress: bool = False,
) -> dict[str, ModalityClassifier]:
    """Train one :class:`ModalityClassifier` per modality on the rows that observe it.

    Cross-entropy, Adam, ``config.epochs`` passes; seeded (the caller's RNG is restored).
    Check each classifier's accuracy with :func:`classifier_accuracy` on held-out data
    before trusting a coherence computed with it.
    """
    config = config or ClassifierConfig()
    if not isinstance(train, MultimodalDataset):
        raise TypeError(f"train_classifiers takes a MultimodalDataset, got {type(train).__name__}")
    labels = _labels(train)
    names = list(train.names if names is None else names)
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    out: dict[str, ModalityClassifier] = {}
    with torch.random.fork_rng(devices=[]), _threads(config.num_threads):
        torch.manual_seed(config.seed)
        for name in names:
            x, y = _rows_of(train, name)
            if len(y) == 0:
                raise ValueError(f"no training row observes modality {name!r}")
            spec = train.modality(name)
            categories = spec.likelihood_kwargs.get("num_categories") if spec.likelihood == "categorical" else None
            clf = ModalityClassifier(spec.shape, num_classes, config.hidden_dim, categories)
            opt = torch.optim.Adam(clf.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            clf.train()
            bar = tqdm(range(config.epochs), desc=f"classifier {name}", disable=not progress, leave=False)
            for _ in bar:
                order = torch.randperm(len(y))
                for start in range(0, len(y), config.batch_size):
                    idx = order[start : start + config.batch_size]
                    loss = F.cross_entropy(clf(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            clf.eval()
            out[name] = clf
    return out


@torch.no_grad()
def predict(classifier: Classifier, x: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted classes ``(B,)`` (argmax of the logits), in chunks of ``batch_size`` rows."""
    if isinstance(classifier, nn.Module):
        was_training = classifier.training
        classifier.eval()
    preds = []
    for start in range(0, x.shape[0], batch_size):
        logits = classifier(x[start : start + batch_size])
        if logits.dim() != 2:
            raise ValueError(f"a classifier must return (B, C) logits, got shape {tuple(logits.shape)}")
        preds.append(logits.argmax(-1).cpu())
    if isinstance(classifier, nn.Module):
        classifier.train(was_training)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def classifier_accuracy(
    classifiers: Mapping[str, Classifier], data: MultimodalDataset | MultimodalBatch,
) -> dict[str, float]:
    """Accuracy of each modality's classifier on the rows of ``data`` that observe it."""
    out = {}
    for name, clf in classifiers.items():
        x, y = _rows_of(data, name)
        if len(y) == 0:
            raise ValueError(f"no row of the evaluation data observes modality {name!r}")
        out[name] = float((predict(clf, x) == y.cpu()).float().mean())
    return out
