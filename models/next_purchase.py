"""Next-purchase model: an LSTM over a customer's orders, mixed with repeat-purchase scores.

Every catalogue item gets one logit, and a softmax over the whole catalogue turns them into the
probability that the item is in the customer's next order:

    logit(i) = bias(i)                                    popularity prior, learned
             + trend(c_i)                                 the item's statistics right now
             + head(h) . emb(i)                           LSTM: what this customer buys next
             + [i bought before] * repeat(f_i, r_i, g(h))  learned repeat score

``c_i`` are the item's catalogue statistics at the scoring moment (popularity all time, in the
last 30 and 7 days, trend, repeat rate: `models.sequences.ItemStats`). ``h`` is the LSTM state
after the customer's last order. Each LSTM step reads one order: the mean
embedding of its items (order boundaries are the steps) plus its time-gap features. ``f_i`` are
the per-item repeat features from `models.sequences.encode_history` (how often, how recently),
``r_i`` a small learned vector per item, and ``g(h)`` lets the sequence decide how this
customer repeats. ``use_lstm=False`` drops
both LSTM terms: that ablation is a learned repeat-purchase + popularity model.

`Recommender.score_batch` is the serving API: worker-shaped histories in, top-k ids and
probabilities out; customers with no known item in their history get the popularity ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.sequences import (
    CATALOGUE_FEATURES,
    ORDER_FEATURES,
    REPEAT_FEATURES,
    EncodedHistory,
    EncoderConfig,
    Order,
    Vocab,
    encode_history,
)


@dataclass
class ModelConfig:
    emb_dim: int = 32
    hidden: int = 64
    repeat_hidden: int = 64
    gate_dim: int = 16
    item_repeat_dim: int = 8  # a learned per-item vector for the repeat scorer
    trend_hidden: int = 16
    dropout: float = 0.5
    use_lstm: bool = True


@dataclass
class Batch:
    items: torch.Tensor  # flat item ids of every order in the batch
    offsets: torch.Tensor  # start of each (customer, order step) bag in ``items``
    order_feats: torch.Tensor  # (B, T, ORDER_FEATURES)
    n_orders: torch.Tensor  # (B,)
    repeat_row: torch.Tensor  # (R,) which customer each repeat candidate belongs to
    repeat_items: torch.Tensor  # (R,)
    repeat_feats: torch.Tensor  # (R, REPEAT_FEATURES)
    catalogue: torch.Tensor  # (U, n_items, CATALOGUE_FEATURES): the distinct moments' statistics
    catalogue_row: torch.Tensor  # (B,) which of them each customer is scored at

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate(histories: list[EncodedHistory]) -> Batch:
    """Pad a list of non-empty histories to T = the longest one (padding bags are empty)."""
    b, t = len(histories), max(h.n_orders for h in histories)
    bag_sizes = np.zeros((b, t), np.int64)
    order_feats = np.zeros((b, t, ORDER_FEATURES), np.float32)
    for row, h in enumerate(histories):
        bag_sizes[row, : h.n_orders] = h.order_lengths
        order_feats[row, : h.n_orders] = h.order_feats
    offsets = np.concatenate([[0], np.cumsum(bag_sizes.ravel())[:-1]])
    moments = {id(h.catalogue): h.catalogue for h in histories}  # usually one, when serving
    moment_row = {key: row for row, key in enumerate(moments)}
    return Batch(
        items=torch.from_numpy(np.concatenate([h.order_items for h in histories])),
        offsets=torch.from_numpy(offsets),
        order_feats=torch.from_numpy(order_feats),
        n_orders=torch.tensor([h.n_orders for h in histories]),
        repeat_row=torch.from_numpy(
            np.concatenate([np.full(len(h.repeat_items), r) for r, h in enumerate(histories)])
        ),
        repeat_items=torch.from_numpy(np.concatenate([h.repeat_items for h in histories])),
        repeat_feats=torch.from_numpy(np.concatenate([h.repeat_feats for h in histories])),
        catalogue=torch.from_numpy(np.stack(list(moments.values()))),
        catalogue_row=torch.tensor([moment_row[id(h.catalogue)] for h in histories]),
    )


class NextPurchaseLSTM(nn.Module):
    def __init__(self, config: ModelConfig, popularity: list[int]) -> None:
        super().__init__()
        self.config = config
        n_items = len(popularity)
        prior = torch.log(torch.tensor(popularity, dtype=torch.float32) + 1.0)
        self.item_bias = nn.Parameter(prior - prior.mean())
        self.trend = nn.Sequential(
            nn.Linear(CATALOGUE_FEATURES, config.trend_hidden),
            nn.GELU(),
            nn.Linear(config.trend_hidden, 1),
        )
        gate = config.gate_dim if config.use_lstm else 0
        if config.use_lstm:
            self.item_emb = nn.EmbeddingBag(n_items, config.emb_dim, mode="mean")
            nn.init.normal_(self.item_emb.weight, std=0.05)
            self.step = nn.Linear(config.emb_dim + ORDER_FEATURES, config.emb_dim)
            self.lstm = nn.LSTM(config.emb_dim, config.hidden, batch_first=True)
            self.drop = nn.Dropout(config.dropout)
            self.head = nn.Linear(config.hidden, config.emb_dim)  # scores against emb (tied)
            self.gate = nn.Linear(config.hidden, gate)
        self.item_repeat = nn.Embedding(n_items, config.item_repeat_dim)
        nn.init.normal_(self.item_repeat.weight, std=0.01)
        self.repeat = nn.Sequential(
            nn.Linear(REPEAT_FEATURES + gate + config.item_repeat_dim, config.repeat_hidden),
            nn.GELU(),
            nn.Linear(config.repeat_hidden, config.repeat_hidden),
            nn.GELU(),
            nn.Linear(config.repeat_hidden, 1),
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B, n_items) over the whole catalogue; the padding item is -inf."""
        b = batch.n_orders.shape[0]
        trend = self.trend(batch.catalogue).squeeze(-1)  # (U, n_items)
        logits = self.item_bias + trend[batch.catalogue_row]
        repeat_in = batch.repeat_feats
        if self.config.use_lstm:
            t = batch.order_feats.shape[1]
            bags = self.item_emb(batch.items, batch.offsets).view(b, t, -1)
            x = F.gelu(self.step(torch.cat([bags, batch.order_feats], dim=-1)))
            out, _ = self.lstm(x)
            h = self.drop(out[torch.arange(b, device=out.device), batch.n_orders - 1])
            logits = logits + self.head(h) @ self.item_emb.weight.T
            repeat_in = torch.cat([repeat_in, self.gate(h)[batch.repeat_row]], dim=-1)
        repeat_in = torch.cat([repeat_in, self.item_repeat(batch.repeat_items)], dim=-1)
        repeat = self.repeat(repeat_in).squeeze(-1)
        logits = logits.index_put((batch.repeat_row, batch.repeat_items), repeat, accumulate=True)
        return logits.index_fill(1, torch.tensor([0], device=logits.device), float("-inf"))


@dataclass
class Scored:
    items: list[str]
    scores: list[float]  # probability that the item is in the next order's pick
    cold_start: bool


class Recommender:
    """A trained model with the vocabulary and encoding it was trained with."""

    def __init__(
        self, model: NextPurchaseLSTM, vocab: Vocab, encoder: EncoderConfig, device: str = "cpu"
    ) -> None:
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.encoder = encoder
        self.device = device
        pop = torch.tensor(vocab.popularity, dtype=torch.float64)
        self.popularity = (pop / pop.sum()).float()

    @torch.no_grad()
    def probabilities(self, histories: list[EncodedHistory], batch_size: int = 512) -> torch.Tensor:
        """(len(histories), n_items) next-item probabilities; cold start rows are popularity."""
        probs = self.popularity.expand(len(histories), -1).clone()
        warm = [r for r, h in enumerate(histories) if h.n_orders]
        for start in range(0, len(warm), batch_size):
            rows = warm[start : start + batch_size]
            batch = collate([histories[r] for r in rows]).to(self.device)
            probs[rows] = torch.softmax(self.model(batch), dim=-1).float().cpu()
        return probs

    def score_batch(
        self,
        histories: list[list[Order]],
        k: int = 10,
        now: float | Sequence[float | None] | None = None,
    ) -> list[Scored]:
        """Top-k products for each worker-shaped history ([(epoch s, [product_id, ...]), ...]).

        ``now``: the scoring time in epoch seconds (the cart event's time), one for all
        histories or one per history; ``None`` scores as of each customer's last order.
        """
        times = now if isinstance(now, Sequence) else [now] * len(histories)
        if len(times) != len(histories):
            raise ValueError(f"{len(times)} times for {len(histories)} histories")
        encoded = [
            encode_history(h, self.vocab, self.encoder, now=t)
            for h, t in zip(histories, times, strict=True)
        ]
        top = self.probabilities(encoded).topk(min(k, len(self.vocab) - 1), dim=-1)
        return [
            Scored(
                items=[self.vocab.items[i] for i in idx.tolist()],
                scores=val.tolist(),
                cold_start=enc.n_orders == 0,
            )
            for enc, val, idx in zip(encoded, top.values, top.indices, strict=True)
        ]
