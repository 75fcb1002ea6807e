"""Reconstruction error of categorical entries."""

import torch


def test_categorical_entries_count_wrong_symbols_not_squared_codes():
    from pyromv.distributions import build_likelihood
    from pyromv.metrics.reconstruction import _entry_error

    head = build_likelihood("categorical", (4,), {"num_categories": 9})
    x = torch.tensor([[0, 8, 3, 3]])
    pred = torch.tensor([[0, 1, 3, 5]])
    # codes 8 vs 1 would give a squared error of 49; a symbol is simply right or wrong
    assert _entry_error(head, pred, x).tolist() == [[0.0, 1.0, 0.0, 1.0]]
