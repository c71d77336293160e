"""Stacking: a small learned re-ranker over the next-purchase model and the bought-together
table (issue 18 part 2), evaluated by ``nextbest evaluate`` (not served: it did not meet the
issue's bar; BENCHMARKS.md, "Tenth session: a learned re-ranker").

The model ranks a customer's re-orders best, but item-to-item co-occurrence ranks the products
they never bought better (docs/next-purchase-model.md). The re-ranker keeps the model's order
among the products the customer bought and re-scores the others with learned weights:

    score(i) = logp(i) + w_bought                           i bought before
             = w_model * logp(i) + sum_n w_n * g_n(i)       i never bought

``logp`` is the model's log-probability (`NextPurchaseLSTM`: popularity, trend, LSTM and
repeat scores); ``g_n = log(1 + t_n / TOGETHER_SCALE)`` with ``t_n`` the bought-together score:
the customer's product counts over their last ``n`` orders (`StackingConfig.windows`) times the
served table's pair similarity (`models.next_purchase.similar_items`, its top neighbours per
product); "bought before" is a repeat candidate of the encoded history. Every feature is what
the worker already has per cart (the encoded history, the logits, the served table). Weights
(1, 0, 0, ...) rank like the model; ``w_bought`` places the never-bought products among the
re-orders.

Learning. The weights are fitted on the customers the model's training held out for early
stopping (`train.fit`'s ``held_out``: never trained on), on their examples as training builds
them (each order predicted from the ones before it, at a moment drawn between the two; each
customer's last `StackingConfig.examples_per_customer`), with a bought-together table fitted
on the other customers' orders only (the held-out customers' future baskets must not be in
their features). The loss is training's (the negative log of the probability mass on the next
order's products) over the whole catalogue, plus the same over the never-bought products only
for the examples whose next order holds one (the discovery cohort's question), each example
weighted 1/sqrt(the customer's examples) as in training. A handful of parameters and a few
hundred examples: L-BFGS, seconds. So a re-ranker is fitted within the training window of
whatever cutoff it is evaluated at, never on the evaluated orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

from models.next_purchase.encoding import (
    EncodedHistory,
    EncoderConfig,
    Order,
    Vocab,
    encode_examples,
)
from models.next_purchase.examples import example_prefixes
from models.next_purchase.model import NextPurchaseLSTM, collate
from models.next_purchase.similar_items import SimilarItems, SimilarityConfig

MODEL_WEIGHTS = ("model_new", "bought")
TOGETHER_SCALE = 0.01  # g = log1p(t / scale); a strong pair is 0.15 (`similar_items`)


@dataclass(frozen=True)
class StackingConfig:
    windows: tuple[int, ...] = (1, 10)  # bought-together over the customer's last n orders
    examples_per_customer: int = 20  # a held-out customer's last examples fitted on
    discovery_loss: float = 1.0  # weight of the never-bought products' loss
    max_iter: int = 100  # L-BFGS iterations

    def __post_init__(self) -> None:
        if (
            not self.windows
            or min(self.windows) < 1
            or self.examples_per_customer < 1
            or self.discovery_loss < 0
        ):
            raise ValueError(f"bad stacking config {self}")

    @property
    def weight_names(self) -> tuple[str, ...]:
        return (*MODEL_WEIGHTS, *(f"together_{n}" for n in self.windows))

    @property
    def identity(self) -> tuple[float, ...]:
        """The weights that rank like the model."""
        return (1.0,) + (0.0,) * (len(self.weight_names) - 1)


@dataclass(frozen=True)
class Candidates:
    """What the re-ranker reads of each scored row's encoded history (the rows of the logits):
    orders per row, each kept order's known item count and flat item ids, and the repeat
    candidates' (row, item): the products bought before."""

    n_orders: np.ndarray
    order_lengths: np.ndarray
    order_items: np.ndarray
    repeat_row: np.ndarray
    repeat_items: np.ndarray

    @classmethod
    def of_histories(cls, histories: Sequence[EncodedHistory]) -> Candidates:
        def joined(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)

        return cls(
            np.array([h.n_orders for h in histories], np.int64),
            joined([h.order_lengths for h in histories]),
            joined([h.order_items for h in histories]),
            joined([np.full(len(h.repeat_items), r) for r, h in enumerate(histories)]),
            joined([h.repeat_items for h in histories]),
        )

    def recent_counts(self, recent: int, n_items: int) -> sparse.csr_matrix:
        """(rows, n_items) how many of each row's last ``recent`` orders hold each item."""
        rows = len(self.n_orders)
        order_row = np.repeat(np.arange(rows), self.n_orders)
        ends = np.cumsum(self.n_orders)
        back = ends[order_row] - 1 - np.arange(len(order_row))  # 0: the row's last order
        keep = np.repeat(back < recent, self.order_lengths)
        item_row = np.repeat(order_row, self.order_lengths)[keep]
        return sparse.csr_matrix(
            (np.ones(len(item_row), np.float32), (item_row, self.order_items[keep])),
            shape=(rows, n_items),
        )


def similarity_matrix(table: SimilarItems, vocab: Vocab) -> sparse.csr_matrix:
    """(n_items, n_items) the table's pair similarities in the model's item ids (row: the
    bought product, column: its neighbour); products the vocabulary lacks are left out."""
    to_vocab = np.array([vocab.index.get(p, -1) for p in table.items], np.int64)
    rows = np.repeat(to_vocab, table.neighbours.shape[1])
    cols = np.where(table.neighbours >= 0, to_vocab[np.maximum(table.neighbours, 0)], -1).ravel()
    keep = (rows >= 0) & (cols >= 0) & (table.neighbours.ravel() >= 0)
    n = len(vocab)
    return sparse.csr_matrix(
        (table.scores.ravel()[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=np.float32
    )


@dataclass(frozen=True)
class Features:
    """Per (row, catalogue product): the model's log-probability, the bought-together feature
    ``g`` of each window and whether the row's customer bought the product before."""

    logp: torch.Tensor
    together: list[torch.Tensor]  # one per window of `StackingConfig.windows`
    bought: torch.Tensor


class Reranker:
    """The fitted weights (`StackingConfig.weight_names`) and the similarity matrix they are
    applied with."""

    def __init__(
        self, weights: Sequence[float], similarity: sparse.csr_matrix, config: StackingConfig
    ) -> None:
        if len(weights) != len(config.weight_names) or not np.isfinite(weights).all():
            raise ValueError(f"reranker weights {list(weights)} for {config.weight_names}")
        self.weights = [float(w) for w in weights]
        self.similarity = similarity
        self.config = config

    def features(self, logits: torch.Tensor, rows: Candidates) -> Features:
        n_items = logits.shape[1]
        logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        together = []
        for window in self.config.windows:
            counts = rows.recent_counts(window, n_items)
            raw = torch.from_numpy((counts @ self.similarity).toarray()).to(logits.dtype)
            together.append(torch.log1p(raw / TOGETHER_SCALE))
        bought = torch.zeros(logits.shape, dtype=torch.bool)
        bought[torch.from_numpy(rows.repeat_row), torch.from_numpy(rows.repeat_items)] = True
        return Features(logp, together, bought)

    def rerank(self, logits: torch.Tensor, histories: Sequence[EncodedHistory]) -> torch.Tensor:
        """The stacked scores (rows, n_items) of the model's ``logits`` of ``histories``; the
        padding item stays -inf."""
        features = self.features(logits, Candidates.of_histories(histories))
        return score(features, torch.tensor(self.weights, dtype=logits.dtype))


def score(f: Features, w: torch.Tensor) -> torch.Tensor:
    """The weights ``w`` (`StackingConfig.weight_names`) applied to the features (the
    module's formula)."""
    logp = f.logp.masked_fill(torch.isinf(f.logp), 0.0)  # the padding item: no NaN from 0 * inf
    new = w[0] * logp
    for k, together in enumerate(f.together):
        new = new + w[2 + k] * together
    out = torch.where(f.bought, logp + w[1], new)
    out[:, 0] = -torch.inf
    return out


def _listwise_loss(
    scores: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Training's loss: -log of the probability mass on the targets, weighted mean."""
    on_target = torch.logsumexp(scores.masked_fill(~targets, -torch.inf), dim=1)
    return -((on_target - torch.logsumexp(scores, dim=1)) * weights).sum() / weights.sum()


def fit(
    model: NextPurchaseLSTM,
    vocab: Vocab,
    orders: dict[str, list[Order]],
    held_out: Sequence[str],
    encoder: EncoderConfig,
    similar: SimilarityConfig,
    config: StackingConfig | None = None,
    seed: int = 0,
) -> tuple[list[float], dict]:
    """Fit the re-ranker's weights (`StackingConfig.weight_names`) for ``model`` on the
    ``held_out`` customers of ``orders`` (see the module); returns them and a summary (weights,
    examples, losses with the identity weights and the fitted ones). Serve them with the table
    of all ``orders``."""
    config = config or StackingConfig()
    held = set(held_out)
    others = {c: seq for c, seq in orders.items() if c not in held}
    fit_similarity = similarity_matrix(SimilarItems.fit(others, similar), vocab)
    probe = Reranker(config.identity, fit_similarity, config)
    rng = np.random.default_rng(seed + 2)
    prefixes, moments, targets, keys = example_prefixes(
        {c: orders[c] for c in sorted(held) if c in orders}, vocab, encoder, rng
    )
    last: dict[str, list[int]] = {}
    for at, (customer, _) in enumerate(keys):
        last.setdefault(customer, []).append(at)
    picked = sorted(i for ats in last.values() for i in ats[-config.examples_per_customer :])
    timeline = vocab.timeline(orders)
    histories = encode_examples(
        [prefixes[i] for i in picked],
        vocab,
        encoder,
        [moments[i] for i in picked],
        [timeline.at(moments[i]) for i in picked],
    )
    kept = [j for j, h in enumerate(histories) if h.n_orders]
    if not kept:  # nothing to learn from: rank like the model
        identity = dict(zip(config.weight_names, config.identity, strict=True))
        return list(config.identity), {"weights": identity, "examples": 0}
    histories = [histories[j] for j in kept]
    picked = [picked[j] for j in kept]
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            [model(collate(histories[s : s + 512])).float() for s in range(0, len(histories), 512)]
        )
    f = probe.features(logits, Candidates.of_histories(histories))
    target = torch.zeros(logits.shape, dtype=torch.bool)
    for row, i in enumerate(picked):
        target[row, torch.from_numpy(targets[i])] = True
    per_customer = {c: len(ats) for c, ats in last.items()}
    weight = torch.tensor(
        [min(per_customer[keys[i][0]], config.examples_per_customer) ** -0.5 for i in picked]
    )
    new_target = target & ~f.bought
    discovering = new_target.any(dim=1)

    def loss(w: torch.Tensor) -> torch.Tensor:
        scores = score(f, w)
        total = _listwise_loss(scores, target, weight)
        if config.discovery_loss and discovering.any():
            new = scores[discovering].masked_fill(f.bought[discovering], -torch.inf)
            total = total + config.discovery_loss * _listwise_loss(
                new, new_target[discovering], weight[discovering]
            )
        return total

    w = torch.tensor(config.identity, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=config.max_iter, line_search_fn="strong_wolfe")
    with torch.no_grad():
        before = float(loss(w))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss(w)
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        after = float(loss(w))
    weights = w.detach().tolist()
    summary = {
        "weights": dict(zip(config.weight_names, weights, strict=True)),
        "customers": len(last),
        "examples": len(histories),
        "discovery_examples": int(discovering.sum()),
        "loss_identity": round(before, 6),
        "loss_fitted": round(after, 6),
    }
    return weights, summary
