"""Next-purchase model: an LSTM over a customer's orders, mixed with repeat-purchase scores.

Every catalogue item gets one logit, and a softmax over the whole catalogue turns them into the
probability that the item is in the customer's next order:

    logit(i) = bias(i)                                    popularity prior, learned
             + trend(c_i)                                 the item's statistics right now
             + head(h) . emb(i)                           LSTM: what this customer buys next
             + [i bought before] * (repeat(f_i, r_i, g(h))  learned repeat score
                                    + w . f_i)             and its linear part

``c_i`` are the item's catalogue statistics at the scoring moment (popularity all time, in the last
30 and 7 days, trend, repeat rate: `models.next_purchase.encoding.ItemStats`). ``h`` is the LSTM
state after the customer's last order. Each LSTM step reads one order: the mean embedding of its
items (order boundaries are the steps) plus its time-gap features. ``f_i`` are the per-item repeat
features from `models.next_purchase.encoding.encode_history` (how often, how recently), ``r_i`` a
small learned vector per item, and ``g(h)`` lets the sequence decide how this customer repeats.
``w`` starts as personal frequency (the weight of log(1 + times bought) at `FREQUENCY_START`, the
others zero), so training starts from the strongest simple baseline and a small shop's model stays
near it. ``use_lstm=False`` drops both LSTM terms: that ablation is a learned repeat-purchase +
popularity model.

`Recommender.score_batch` is the serving API: worker-shaped histories in, top-k ids and
probabilities out; customers with no known item in their history get the popularity ranking.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.next_purchase.encoding import (
    CATALOGUE_FEATURES,
    ORDER_FEATURES,
    REPEAT_FEATURES,
    EncodedBatch,
    EncodedHistory,
    EncoderConfig,
    Order,
    Vocab,
    encode_batch,
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
    repeat_linear: bool = True  # the linear repeat term ``w . f_i`` (False: artifacts before it)


FREQUENCY_START = 3.0
"""The linear repeat term's first weight on log(1 + times bought): with the centred
log-popularity prior, an untrained model ranks a customer's products roughly by how often
they bought them, like personal frequency."""


@dataclass
class PaddedBatch:
    """Histories as tensors, padded to the longest one (`collate`): the input of
    `NextPurchaseLSTM.forward` (training, evaluation); serving uses `ServeBatch`."""

    items: torch.Tensor  # flat item ids of every order in the batch
    offsets: torch.Tensor  # start of each (customer, order step) bag in ``items``
    order_feats: torch.Tensor  # (B, T, ORDER_FEATURES)
    n_orders: torch.Tensor  # (B,)
    repeat_row: torch.Tensor  # (R,) which customer each repeat candidate belongs to
    repeat_items: torch.Tensor  # (R,)
    repeat_feats: torch.Tensor  # (R, REPEAT_FEATURES)
    catalogue: torch.Tensor  # (U, n_items, CATALOGUE_FEATURES): the distinct moments' statistics
    catalogue_row: torch.Tensor  # (B,) which of them each customer is scored at

    def to(self, device: torch.device | str) -> PaddedBatch:
        return PaddedBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate(histories: list[EncodedHistory]) -> PaddedBatch:
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
    return PaddedBatch(
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
        if config.repeat_linear:
            self.repeat_linear = nn.Linear(REPEAT_FEATURES, 1, bias=False)
            nn.init.zeros_(self.repeat_linear.weight)
            with torch.no_grad():
                self.repeat_linear.weight[0, 0] = FREQUENCY_START  # feature 0: log1p(count)

    def repeat_scores(self, repeat_in: list[torch.Tensor]) -> torch.Tensor:
        """(R,) the repeat score of each candidate; ``repeat_in[0]`` are its repeat features."""
        scores = self.repeat(torch.cat(repeat_in, dim=-1)).squeeze(-1)
        if self.config.repeat_linear:
            scores = scores + self.repeat_linear(repeat_in[0]).squeeze(-1)
        return scores

    def forward(self, batch: PaddedBatch) -> torch.Tensor:
        """Logits (B, n_items) over the whole catalogue; the padding item is -inf."""
        b = batch.n_orders.shape[0]
        trend = self.trend(batch.catalogue).squeeze(-1)  # (U, n_items)
        logits = self.item_bias + trend[batch.catalogue_row]
        repeat_in = [batch.repeat_feats]
        if self.config.use_lstm:
            t = batch.order_feats.shape[1]
            bags = self.item_emb(batch.items, batch.offsets).view(b, t, -1)
            x = F.gelu(self.step(torch.cat([bags, batch.order_feats], dim=-1)))
            out, _ = self.lstm(x)
            h = self.drop(out[torch.arange(b, device=out.device), batch.n_orders - 1])
            logits = logits + self.head(h) @ self.item_emb.weight.T
            repeat_in.append(self.gate(h)[batch.repeat_row])
        repeat_in.append(self.item_repeat(batch.repeat_items))
        repeat = self.repeat_scores(repeat_in)
        logits = logits.index_put((batch.repeat_row, batch.repeat_items), repeat, accumulate=True)
        return logits.index_fill(1, torch.tensor([0], device=logits.device), float("-inf"))

    def catalogue_logits(self, catalogue: torch.Tensor) -> torch.Tensor:
        """(n_items,) the part of every customer's logits that depends on the moment only:
        item bias + trend, as `forward` computes it for one ``catalogue`` (n_items, features)."""
        return self.item_bias + self.trend(catalogue[None]).squeeze(-1)[0]

    def serve_logits(self, batch: ServeBatch, base: torch.Tensor) -> torch.Tensor:
        """`forward`'s logits in eval mode, computed for serving (equal, tested bit for bit):
        ``base`` is `catalogue_logits` of the moment, computed once; each order's input step is
        computed once, without padding; the LSTM runs once per bucket of ``batch.runs`` (a
        history's LSTM state depends neither on the other rows of its run nor on padding after
        its end)."""
        b = batch.unsort.shape[0]
        repeat_in = [batch.repeat_feats]
        if self.config.use_lstm:
            bags = self.item_emb(batch.items, batch.offsets)
            steps = F.gelu(self.step(torch.cat([bags, batch.order_feats], dim=-1)))
            steps = torch.cat([steps, steps.new_zeros(1, steps.shape[1])])  # the padding row
            weights = self.lstm.all_weights[0]  # `nn.LSTM.forward`'s call, without its checks
            states = []
            for run in batch.runs:
                zeros = steps.new_zeros(1, run.rows, self.config.hidden)
                x = steps[run.gather].view(run.rows, run.longest, -1)
                out, _, _ = torch.lstm(x, (zeros, zeros), weights, True, 1, 0.0, False, False, True)
                states.append(out.reshape(-1, out.shape[-1])[run.last])
            h = torch.cat(states)[batch.unsort]
            logits = (self.head(h) @ self.item_emb.weight.T).add_(base)
            repeat_in.append(self.gate(h)[batch.repeat_row])
        else:
            logits = base.expand(b, -1).clone()
        repeat_in.append(self.item_repeat(batch.repeat_items))
        repeat = self.repeat_scores(repeat_in)
        logits.view(-1).index_add_(0, batch.repeat_at, repeat)  # `forward`'s index_put, faster
        logits[:, 0] = float("-inf")
        return logits


LENGTH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
"""Serving runs the LSTM once per bucket of histories whose order count is at most each of
these (and above the one before), each padded to its own longest history only."""
LSTM_RUN_STEPS = 100
"""What one more LSTM run costs, in padded (history, order) steps (one core: ~100 µs a run,
~1 µs a step): a bucket joins the next one when its extra padding there costs less."""
RUN_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
"""The sizes an LSTM run's rows and steps are padded up to (a larger one stays as it is).

oneDNN builds the LSTM kernel for each new input shape, which costs more than the run
(~0.5-1 ms per new shape on one core) and is cached per shape: runs padded to these few
shapes hit the cache after `Recommender.warm_up`, where arbitrary micro-batches would keep
missing it. Padding adds fewer than half as many rows or steps again."""
PADDED_CELLS = 4096
"""Runs of up to this many (rows x steps), padded, are padded to `RUN_SIZES` and built by
`Recommender.warm_up`; a larger run keeps its own shape: it takes longer (~4 ms on one core)
than building its kernel (~0.5-1 ms), and padding would add more than that."""


def run_size(n: int) -> int:
    """The smallest of `RUN_SIZES` that holds ``n`` (``n`` itself above them)."""
    at = bisect.bisect_left(RUN_SIZES, n)
    return RUN_SIZES[at] if at < len(RUN_SIZES) else n


@dataclass
class LSTMBucket:
    """One LSTM run of `NextPurchaseLSTM.serve_logits`: ``steps[gather]`` (padding indexes the
    zero row after the last step) viewed (rows, longest, dim); ``last`` picks each history's
    state at its last order from the flattened output. ``rows`` and ``longest`` are padded to
    `RUN_SIZES`; the padding rows are all padding."""

    gather: torch.Tensor  # (rows * longest,)
    rows: int
    longest: int
    last: torch.Tensor  # (histories,)

    def to(self, device: torch.device | str) -> LSTMBucket:
        return LSTMBucket(self.gather.to(device), self.rows, self.longest, self.last.to(device))


def lstm_buckets(n_orders: np.ndarray, buckets: bool = True) -> tuple[list[LSTMBucket], np.ndarray]:
    """The LSTM runs for histories of ``n_orders`` (all >= 1) orders whose steps lie flat, one
    history after the other, and the permutation that puts the runs' histories back in order.

    With ``buckets``, one run per `LENGTH_BUCKETS` bucket, histories by length (less
    padding), short buckets merged into the next where that is cheaper (`LSTM_RUN_STEPS`);
    without, one run padded to the longest history, like `collate`. Either way each run's
    rows and steps are padded up to `RUN_SIZES`.
    """
    first = np.cumsum(n_orders) - n_orders
    pad = int(n_orders.sum())  # the zero row appended to the steps
    bucket = np.searchsorted(LENGTH_BUCKETS, n_orders) if buckets else np.zeros_like(n_orders)
    order = np.argsort(bucket, kind="stable")
    groups: list[tuple[np.ndarray, int]] = []
    for rows in np.split(order, np.flatnonzero(np.diff(bucket[order])) + 1):
        longest = int(n_orders[rows].max())
        if groups and len(groups[-1][0]) * (longest - groups[-1][1]) < LSTM_RUN_STEPS:
            rows = np.concatenate([groups.pop()[0], rows])
        groups.append((rows, longest))
    runs = []
    for rows, longest in groups:
        n = n_orders[rows]
        height, width = run_size(len(rows)), run_size(longest)
        if height * width > PADDED_CELLS:
            height, width = len(rows), longest
        gather = np.full((height, width), pad)
        step = np.arange(width)
        gather[: len(rows)] = np.where(step < n[:, None], first[rows, None] + step, pad)
        last = np.arange(len(rows)) * width + n - 1
        runs.append(
            LSTMBucket(torch.from_numpy(gather.ravel()), height, width, torch.from_numpy(last))
        )
    return runs, np.argsort(order)


@dataclass
class ServeBatch:
    """`EncodedBatch` of the warm rows as tensors, for `NextPurchaseLSTM.serve_logits`.

    Orders are flat (``n_orders`` per row, in turn): no padding but the LSTM's, per bucket.
    """

    items: torch.Tensor  # flat item ids of every order
    offsets: torch.Tensor  # start of each order's bag in ``items``
    order_feats: torch.Tensor  # (orders, ORDER_FEATURES)
    repeat_row: torch.Tensor  # (R,)
    repeat_items: torch.Tensor  # (R,)
    repeat_feats: torch.Tensor  # (R, REPEAT_FEATURES)
    repeat_at: torch.Tensor  # (R,) row * n_items + item: where each candidate's score goes
    runs: list[LSTMBucket]
    unsort: torch.Tensor  # (B,) row i's LSTM state is row unsort[i] of the runs' states

    def to(self, device: torch.device | str) -> ServeBatch:
        moved = {f: getattr(self, f).to(device) for f in self.__dataclass_fields__ if f != "runs"}
        return ServeBatch(**moved, runs=[run.to(device) for run in self.runs])

    @classmethod
    def warm_rows(cls, encoded: EncodedBatch, buckets: bool = True) -> ServeBatch:
        """The rows with at least one order (cold starts have no repeat candidates)."""
        warm = encoded.n_orders > 0
        place = np.cumsum(warm) - 1
        offsets = np.zeros(len(encoded.order_lengths), np.int64)
        np.cumsum(encoded.order_lengths[:-1], out=offsets[1:])
        runs, unsort = lstm_buckets(encoded.n_orders[warm], buckets)
        repeat_row = place[encoded.repeat_row]
        return cls(
            items=torch.from_numpy(encoded.order_items),
            offsets=torch.from_numpy(offsets),
            order_feats=torch.from_numpy(encoded.order_feats),
            repeat_row=torch.from_numpy(repeat_row),
            repeat_items=torch.from_numpy(encoded.repeat_items),
            repeat_feats=torch.from_numpy(encoded.repeat_feats),
            repeat_at=torch.from_numpy(repeat_row * len(encoded.catalogue) + encoded.repeat_items),
            runs=runs,
            unsort=torch.from_numpy(unsort),
        )


@dataclass
class Scored:
    items: list[str]
    scores: list[float]  # probability that the item is in the next order's pick
    cold_start: bool


SCORE_CHUNK = 512  # histories per forward pass in `Recommender.score_batch`


class Recommender:
    """A trained model with the vocabulary and encoding it was trained with.

    The model is frozen once here: serving caches what depends only on its weights and the
    vocabulary's catalogue statistics (`NextPurchaseLSTM.catalogue_logits`).
    """

    def __init__(
        self, model: NextPurchaseLSTM, vocab: Vocab, encoder: EncoderConfig, device: str = "cpu"
    ) -> None:
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.encoder = encoder
        self.device = device
        pop = torch.tensor(vocab.popularity, dtype=torch.float64)
        self.popularity = (pop / pop.sum()).float()
        self._popular: dict[int, tuple[list[str], list[float]]] = {}  # k -> popularity's top k
        self._base: tuple[np.ndarray, torch.Tensor] | None = None  # catalogue, its logits

    @torch.no_grad()
    def warm_up(self, max_rows: int = SCORE_CHUNK) -> None:
        """Run the LSTM once at every padded run shape serving can meet (`RUN_SIZES` up to
        ``max_rows`` histories and the encoder's ``max_orders`` steps, `PADDED_CELLS`), so that
        no micro-batch waits for oneDNN to build one. oneDNN caches kernels per shape and torch
        thread count: call it on the serving thread, or with the same `torch.set_num_threads`.
        """
        if not self.model.config.use_lstm:
            return
        rows = [n for n in RUN_SIZES if n <= run_size(max_rows)]
        steps = [n for n in RUN_SIZES if n <= run_size(self.encoder.max_orders)]
        for height in rows:
            for width in steps:
                if height * width <= PADDED_CELLS:
                    self.model.lstm(
                        torch.zeros(height, width, self.model.config.emb_dim, device=self.device)
                    )

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
        buckets: bool = True,
    ) -> list[Scored]:
        """Top-k products for each worker-shaped history ([(epoch s, [product_id, ...]), ...]).

        ``now``: the scoring time in epoch seconds (the cart event's time), one for all
        histories or one per history; ``None`` scores as of each customer's last order.
        The same results as `probabilities` of each `encode_history` (tested), computed the
        serving way: `encode_batch`, then `top_k`, in chunks of ``SCORE_CHUNK`` histories.
        """
        times = now if isinstance(now, Sequence) else [now] * len(histories)
        if len(times) != len(histories):
            raise ValueError(f"{len(times)} times for {len(histories)} histories")
        scored = []
        for start in range(0, len(histories), SCORE_CHUNK):
            chunk = slice(start, start + SCORE_CHUNK)
            encoded = encode_batch(histories[chunk], self.vocab, self.encoder, times[chunk])
            scored += self.top_k(encoded, k, buckets)
        return scored

    @torch.no_grad()
    def top_k(self, encoded: EncodedBatch, k: int = 10, buckets: bool = True) -> list[Scored]:
        """The k most likely next products of each row of ``encoded`` (cold rows: popularity)."""
        k = min(k, len(self.vocab) - 1)
        items = self.vocab.items
        if k not in self._popular:
            top = self.popularity.topk(k)
            self._popular[k] = ([items[i] for i in top.indices.tolist()], top.values.tolist())
        popular_items, popular_scores = self._popular[k]
        warm = np.flatnonzero(encoded.n_orders)
        ranked = iter(())
        if len(warm):
            if self._base is None:
                catalogue = torch.from_numpy(encoded.catalogue).to(self.device)
                self._base = (encoded.catalogue, self.model.catalogue_logits(catalogue))
            if self._base[0] is not encoded.catalogue:
                raise ValueError("top_k serves the vocabulary's catalogue statistics only")
            batch = ServeBatch.warm_rows(encoded, buckets).to(self.device)
            logits = self.model.serve_logits(batch, self._base[1])
            top = torch.softmax(logits, dim=-1, out=logits).topk(k, dim=-1)  # in place
            ranked = zip(top.indices.cpu().tolist(), top.values.cpu().tolist(), strict=True)
        scored = []
        for n in encoded.n_orders.tolist():
            if n:
                indices, scores = next(ranked)
                scored.append(Scored(list(map(items.__getitem__, indices)), scores, False))
            else:
                scored.append(Scored(popular_items.copy(), popular_scores.copy(), True))
        return scored
