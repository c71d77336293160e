"""The simple baselines of the evaluation protocol, as full-catalogue score matrices.

Each returns float64 scores of shape (customers, catalogue): higher ranks first, the padding id
is -inf, and popularity (orders holding the item, then product id: the `Vocab` order) breaks
every tie, so rankings are deterministic. Personal scores use the customer's whole history.
"""

from __future__ import annotations

import torch

from models.next_purchase.encoding import Order, Vocab


def _popularity(vocab: Vocab) -> torch.Tensor:
    return torch.arange(len(vocab), 0, -1, dtype=torch.float64)  # vocab is sorted by it


def _rows(scores: torch.Tensor, n: int) -> torch.Tensor:
    out = scores.repeat(n, 1) if scores.dim() == 1 else scores
    out[:, 0] = -torch.inf
    return out


def popular_orders(histories: list[list[Order]], vocab: Vocab) -> torch.Tensor:
    """Most popular by number of orders holding the item."""
    return _rows(_popularity(vocab), len(histories))


def popular_units(
    histories: list[list[Order]], vocab: Vocab, units: dict[str, float]
) -> torch.Tensor:
    """Most popular by units sold (``units``: product -> quantity before the cutoff)."""
    v = len(vocab)
    by_units = sorted(range(1, v), key=lambda i: (-units.get(vocab.items[i], 0.0), i))
    scores = torch.zeros(v, dtype=torch.float64)
    scores[by_units] = torch.arange(v - 1, 0, -1, dtype=torch.float64)
    return _rows(scores, len(histories))


def order_counts(histories: list[list[Order]], vocab: Vocab) -> torch.Tensor:
    """(customers, catalogue) how many of each customer's orders hold each item."""
    counts = torch.zeros(len(histories), len(vocab), dtype=torch.float64)
    for row, orders in enumerate(histories):
        for _, products in orders:
            counts[row, [vocab.index[p] for p in products if p in vocab.index]] += 1.0
    return counts


def personal_frequency(histories: list[list[Order]], vocab: Vocab) -> torch.Tensor:
    """The customer's items by number of their orders holding them, then popularity fill."""
    freq = order_counts(histories, vocab)
    return _rows(freq * (len(vocab) + 1) + _popularity(vocab), len(histories))


def last_basket(histories: list[list[Order]], vocab: Vocab) -> torch.Tensor:
    """The items of the customer's last order, by popularity, then popularity fill."""
    last = torch.zeros(len(histories), len(vocab), dtype=torch.float64)
    for row, orders in enumerate(histories):
        if orders:
            last[row, [vocab.index[p] for p in orders[-1][1] if p in vocab.index]] = 1.0
    return _rows(last * (len(vocab) + 1) + _popularity(vocab), len(histories))
