"""Training and evaluation examples: each order of a customer predicted from the orders
before it, encoded as serving encodes a history (`models.next_purchase.encoding`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.next_purchase.encoding import (
    EncodedHistory,
    EncoderConfig,
    ItemTimeline,
    Order,
    Vocab,
    encode_examples,
)


@dataclass
class Example:
    history: EncodedHistory
    target: np.ndarray  # known item ids of the next order
    customer: str
    seconds: float  # when the target order was placed


def build_examples(
    orders: dict[str, list[Order]],
    vocab: Vocab,
    config: EncoderConfig,
    rng: np.random.Generator | None = None,
    timeline: ItemTimeline | None = None,
) -> list[Example]:
    """One example per order that has an earlier order: predict it from what came before.

    The input is `encode_history` of the worker-shaped prefix, scored at a moment ``now`` with
    the catalogue statistics of that moment. Without ``rng``, ``now`` is when the order was
    placed: what serving sees at a cart event. With ``rng``, ``now`` is drawn uniformly between
    the previous order and this one: what the evaluation asks at a cutoff, "what will the next
    order hold", not knowing when it comes. Targets with no known product are skipped.
    """
    timeline = timeline if timeline is not None else vocab.timeline(orders)
    prefixes, moments, targets, keys = example_prefixes(orders, vocab, config, rng)
    stats = [timeline.at(now) for now in moments]
    histories = encode_examples(prefixes, vocab, config, moments, stats)
    return [
        Example(history, target, cust, seconds)
        for history, target, (cust, seconds) in zip(histories, targets, keys, strict=True)
        if history.n_orders
    ]


def example_prefixes(
    orders: dict[str, list[Order]],
    vocab: Vocab,
    config: EncoderConfig,
    rng: np.random.Generator | None = None,
) -> tuple[list[list[Order]], list[float], list[np.ndarray], list[tuple[str, float]]]:
    """`build_examples` before encoding: per example the worker-shaped prefix, the moment it is
    scored at, the target's known item ids and (customer, target order time)."""
    prefixes, moments, targets, keys = [], [], [], []
    for cust, seq in orders.items():
        for t in range(1, len(seq)):
            target = [i for i in (vocab.get(p) for p in seq[t][1]) if i is not None]
            if not target:
                continue
            now = seq[t][0]
            if rng is not None:
                now = seq[t - 1][0] + rng.random() * (now - seq[t - 1][0])
            prefixes.append(seq[max(0, t - config.max_orders) : t])
            moments.append(now)
            targets.append(np.array(sorted(set(target))))
            keys.append((cust, seq[t][0]))
    return prefixes, moments, targets, keys
