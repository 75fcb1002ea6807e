"""Character-level text modalities: a word placed at a random position in a padded sequence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The 71-symbol alphabet of the MNIST-SVHN-Text release (Sutter et al. 2020), in its order.
#: ``-`` appears twice there; a character's code is its first position, as in the original.
MMJSD_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{} \n"

#: Lower-case letters, space, ``-`` and ``/``: enough for the Fashion-MNIST class names.
FASHION_ALPHABET = " abcdefghijklmnopqrstuvwxyz-/"


def check_alphabet(alphabet: str, words: Sequence[str], length: int, source: str) -> None:
    """Raise ``ValueError`` when a word does not fit ``length`` or uses a symbol outside
    ``alphabet``, or when the alphabet lacks the space used for padding."""
    if " " not in alphabet:
        raise ValueError(f"{source}: the alphabet must contain ' ' (the padding symbol)")
    if len(alphabet) < 2:
        raise ValueError(f"{source}: the alphabet needs at least 2 symbols")
    for w in words:
        if len(w) > length:
            raise ValueError(f"{source}: text_length={length} is shorter than the word {w!r}")
        bad = sorted(set(w) - set(alphabet))
        if bad:
            raise ValueError(f"{source}: the word {w!r} uses symbols {bad} outside the alphabet")


def place_words(
    words: Sequence[str],
    labels: np.ndarray,
    length: int,
    alphabet: str,
    rng: np.random.Generator,
    last_free: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Character codes ``(N, length)`` of ``words[labels[i]]`` padded with spaces.

    Row ``i`` starts its word at a position drawn uniformly from ``0 .. length - len(word)``
    (``last_free=True``: ``0 .. length - len(word) - 1``, which keeps the last symbol a space
    as in the MNIST-SVHN-Text code). Returns the codes and the start positions.
    """
    space = alphabet.index(" ")
    codes = np.full((len(labels), length), space, dtype=np.int64)
    lengths = np.array([len(w) for w in words])[labels]
    free = length - lengths - (1 if last_free else 0)
    if np.any(free < 0):
        raise ValueError(f"text_length={length} leaves no room for every word")
    starts = np.floor(rng.random(len(labels)) * (free + 1)).astype(np.int64)
    word_codes = [np.array([alphabet.index(c) for c in w], dtype=np.int64) for w in words]
    for c, wc in enumerate(word_codes):
        rows = np.flatnonzero(labels == c)
        if len(rows) == 0:
            continue
        cols = starts[rows, None] + np.arange(len(wc))[None, :]
        codes[rows[:, None], cols] = wc[None, :]
    return codes, starts


def decode_text(codes: np.ndarray, alphabet: str) -> list[str]:
    """The strings of ``(N, length)`` character codes."""
    return ["".join(alphabet[int(c)] for c in row) for row in np.asarray(codes)]
