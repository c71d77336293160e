"""Train the next-purchase model and write a versioned artifact (``nextbest train``).

    nextbest train --data ../shared/data/online_retail.csv.gz --seed 0
    nextbest train --interactions interactions.csv   # an Amazon Personalize interactions file

Every order that has an earlier order is one example
(`models.next_purchase.examples.build_examples`),
scored at a moment ``now`` drawn between the previous order and this one, fresh every epoch:
like the evaluation's cutoff, it falls somewhere in the customer's gap between orders, and the
model learns what the time since the last order says. A random 10% of customers is held out;
training stops when their MRR has not improved for ``patience`` epochs (or when another epoch
as long as the longest so far would end past the time budget) and the best epoch's weights are
kept. The loss is the negative log of the probability mass the model puts on the next order's
items, i.e. of the top pick landing in that order, which is what Hit@k counts. Each example
weighs 1/sqrt(the customer's number of examples), so a few wholesalers with hundreds of orders
do not drown the typical customer.

``--interactions FILE`` trains on an Amazon Personalize interactions CSV
(`models.next_purchase.interactions`:
purchases only, one order per customer and timestamp) instead of an Online Retail file; every
item is then a product unless ``--product-pattern`` says otherwise. ``--product-pattern`` is the
merchant's product rule (`streams.state.products.product_rule`); the artifact's encoder keeps it, so
serving encodes histories with the rule the model was trained on.

The same orders train the item-to-item "bought together" table
(`models.next_purchase.similar_items`, about a second on Online Retail), saved in the same version
directory: one version is one training run on one data file, and the worker swaps both in at
once.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from models.next_purchase import artifact
from models.next_purchase.encoding import EncoderConfig, Order, Vocab
from models.next_purchase.examples import Example, build_examples
from models.next_purchase.interactions import EVERY_ITEM, load_interactions
from models.next_purchase.loading import epoch_seconds, file_sha256, load_orders, split_at
from models.next_purchase.model import ModelConfig, NextPurchaseLSTM, collate
from models.next_purchase.similar_items import SimilarItems, SimilarityConfig
from streams.state.products import product_rule

DEFAULT_DATA = "../shared/data/online_retail.csv.gz"
KS = (1, 5, 10, 20)


@dataclass
class TrainConfig:
    data: str = DEFAULT_DATA
    data_format: str = "online_retail"  # or "interactions": a Personalize interactions CSV
    out: str = "var/models/next_purchase"
    cutoff: str | None = None  # train only on orders before this date (for evaluation)
    seed: int = 0
    max_epochs: int = 40
    patience: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    val_fraction: float = 0.1
    example_time: str = "between"  # or "order": the scoring moment of an example (build_examples)
    time_budget_s: float = 540.0
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    similar: SimilarityConfig = field(default_factory=SimilarityConfig)


MIN_CUSTOMERS = 2


def out_of_time(elapsed_s: float, longest_epoch_s: float, budget_s: float) -> bool:
    """Whether another epoch as long as the longest so far would end past the time budget:
    training stops before it, instead of running up to one epoch past the budget."""
    return elapsed_s + longest_epoch_s > budget_s


class NotEnoughData(ValueError):
    """Too few customers with a repeat order to train and validate on."""


def target_ranks(logits: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-placed target item in a full-catalogue ranking (inf: none)."""
    best = logits.masked_fill(~target_mask, float("-inf")).max(dim=-1).values
    ranks = 1.0 + (logits > best[:, None]).sum(dim=-1).double()
    return torch.where(torch.isinf(best), torch.inf, ranks)


def rank_metrics(ranks: torch.Tensor) -> dict[str, float]:
    out = {f"hit@{k}": float((ranks <= k).double().mean()) for k in KS}
    out["mrr"] = float((1.0 / ranks).mean())
    out["n"] = len(ranks)
    return out


def _target_mask(examples: list[Example], n_items: int) -> torch.Tensor:
    mask = torch.zeros(len(examples), n_items, dtype=torch.bool)
    for row, ex in enumerate(examples):
        mask[row, torch.from_numpy(ex.target)] = True
    return mask


def _evaluate(model: NextPurchaseLSTM, examples: list[Example], device: str) -> dict:
    model.eval()
    ranks = []
    with torch.no_grad():
        for start in range(0, len(examples), 512):
            chunk = examples[start : start + 512]
            logits = model(collate([e.history for e in chunk]).to(device)).cpu()
            ranks.append(target_ranks(logits, _target_mask(chunk, logits.shape[1])))
    return rank_metrics(torch.cat(ranks))


@contextmanager
def _deterministic_algorithms() -> Iterator[None]:
    """`torch.use_deterministic_algorithms` on inside the block, then as it was.

    Warn only: an op with no deterministic version (cuBLAS on CUDA without
    ``CUBLAS_WORKSPACE_CONFIG``) warns instead of failing training. The flag is process-wide:
    code running in other threads meanwhile sees it too.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def fit(
    orders: dict[str, list[Order]], vocab: Vocab, cfg: TrainConfig, progress: bool = True
) -> tuple[NextPurchaseLSTM, dict]:
    """Train on ``orders`` with early stopping; returns the best model and a training summary.

    Reproducible on CPU: the same data, config and seed give bit-identical weights, run after
    run, at the same torch thread count (`torch.get_num_threads`), unless the time budget
    (wall clock) stops training at another epoch. Another thread count gives other weights
    (float sums are split differently across threads). Not promised on CUDA.

    PyTorch's deterministic algorithms are on while it trains, then restored: otherwise the
    backward of the model's ``trend[catalogue_row]``, an ``index_put(accumulate=True)``,
    adds the rows of customers scored at the same moment with parallel atomic adds, in
    whatever order the threads get there.
    """
    with _deterministic_algorithms():
        return _fit(orders, vocab, cfg, progress)


def _fit(
    orders: dict[str, list[Order]], vocab: Vocab, cfg: TrainConfig, progress: bool
) -> tuple[NextPurchaseLSTM, dict]:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    started = time.monotonic()
    timeline = vocab.timeline(orders)
    draw = np.random.default_rng(cfg.seed + 1) if cfg.example_time == "between" else None
    examples = build_examples(orders, vocab, cfg.encoder, rng=draw, timeline=timeline)
    customers = sorted({e.customer for e in examples})
    if len(customers) < MIN_CUSTOMERS:
        raise NotEnoughData(
            f"{len(customers)} customer(s) with a repeat order (an order after an earlier one): "
            f"training needs at least {MIN_CUSTOMERS}, one of them held out for early stopping"
        )
    rng = np.random.default_rng(cfg.seed)
    n_val = max(1, int(len(customers) * cfg.val_fraction))
    held_out = set(rng.choice(customers, n_val, replace=False))
    train = [e for e in examples if e.customer not in held_out]
    val = [e for e in examples if e.customer in held_out]
    train_orders = {c: seq for c, seq in orders.items() if c not in held_out}

    per_customer: dict[str, int] = {}
    for e in train:
        per_customer[e.customer] = per_customer.get(e.customer, 0) + 1
    weights = torch.tensor([per_customer[e.customer] ** -0.5 for e in train], device=device)
    model = NextPurchaseLSTM(cfg.model, vocab.popularity).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, best_epoch, log = -1.0, None, 0, []
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    bar = tqdm(total=cfg.max_epochs * steps_per_epoch, disable=not progress, desc="train")
    longest_epoch, epoch_started = 0.0, started  # epoch 1 includes building its examples
    for epoch in range(1, cfg.max_epochs + 1):
        if epoch > 1:
            epoch_started = time.monotonic()
        model.train()
        if draw is not None and epoch > 1:  # new moments each epoch
            train = build_examples(train_orders, vocab, cfg.encoder, rng=draw, timeline=timeline)
        order = rng.permutation(len(train))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            chunk = [train[i] for i in order[start : start + cfg.batch_size]]
            logp = torch.log_softmax(model(collate([e.history for e in chunk]).to(device)), -1)
            on_target = logp.masked_fill(~_target_mask(chunk, logp.shape[1]).to(device), -torch.inf)
            w = weights[order[start : start + cfg.batch_size]]
            loss = -(torch.logsumexp(on_target, dim=-1) * w).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(chunk)
            bar.update()
        metrics = _evaluate(model, val, device)
        log.append({"epoch": epoch, "train_loss": total / len(train), **metrics})
        bar.set_postfix(loss=f"{total / len(train):.3f}", val_mrr=f"{metrics['mrr']:.4f}")
        if metrics["mrr"] > best:
            best, best_epoch = metrics["mrr"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        longest_epoch = max(longest_epoch, time.monotonic() - epoch_started)
        if epoch - best_epoch >= cfg.patience or out_of_time(
            time.monotonic() - started, longest_epoch, cfg.time_budget_s
        ):
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    summary = {
        "examples_train": len(train),
        "examples_val": len(val),
        "best_epoch": best_epoch,
        "epochs_run": len(log),
        "seconds": round(time.monotonic() - started, 1),
        "device": device,
        "validation": log[best_epoch - 1],
        "log": log,
        "held_out": sorted(map(str, held_out)),  # never trained on: what `stacking` learns from
    }
    return model, summary


def parse_args(argv: list[str]) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="nextbest train", description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", default=d.data, help="Online Retail csv / csv.gz / xlsx")
    source.add_argument(
        "--interactions",
        metavar="FILE",
        help="an Amazon Personalize interactions CSV (USER_ID, ITEM_ID, TIMESTAMP, EVENT_TYPE)",
    )
    p.add_argument(
        "--product-pattern",
        help="the merchant's product rule, a regex (default: UCI stock codes; every item for "
        "--interactions)",
    )
    p.add_argument("--out", default=d.out, help="artifact root; a <version>/ dir goes in it")
    p.add_argument("--cutoff", default=None, help="use only orders before this date")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-epochs", type=int, default=d.max_epochs)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--time-budget-s", type=float, default=d.time_budget_s)
    p.add_argument("--device", default=d.device, help="auto (cuda if present), cpu, cuda")
    p.add_argument("--no-lstm", action="store_true", help="ablation: repeat + popularity only")
    a = p.parse_args(argv)
    pattern = a.product_pattern or (EVERY_ITEM if a.interactions else None)
    try:
        product_rule(pattern)
    except ValueError as exc:
        p.error(f"--product-pattern: {exc}")
    return TrainConfig(
        data=a.interactions or a.data,
        data_format="interactions" if a.interactions else "online_retail",
        out=a.out,
        cutoff=a.cutoff,
        seed=a.seed,
        max_epochs=a.max_epochs,
        patience=a.patience,
        batch_size=a.batch_size,
        lr=a.lr,
        time_budget_s=a.time_budget_s,
        device=a.device,
        model=ModelConfig(use_lstm=not a.no_lstm),
        encoder=EncoderConfig(product_pattern=pattern),
    )


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    if cfg.data_format == "interactions":
        orders, report = load_interactions(cfg.data, product_pattern=cfg.encoder.product_pattern)
    else:
        orders, report = load_orders(cfg.data, cfg.encoder.product_pattern)
    if not orders:
        print(f"no orders to train on in {cfg.data}: {asdict(report)}", file=sys.stderr)
        return 1
    if cfg.cutoff:
        orders, _ = split_at(orders, epoch_seconds(cfg.cutoff))
    vocab = Vocab.build(orders)
    try:
        model, summary = fit(orders, vocab, cfg)
    except NotEnoughData as error:
        print(f"cannot train on {cfg.data}: {error}", file=sys.stderr)
        return 1
    del summary["held_out"]  # customer ids: for `stacking` in evaluation, not the artifact
    started = time.monotonic()
    similar = SimilarItems.fit(orders, cfg.similar)
    summary["similar_items"] = {
        "products": len(similar),
        "with_neighbours": int((similar.neighbours[:, 0] >= 0).sum()),
        "seconds": round(time.monotonic() - started, 2),
    }
    sha = file_sha256(cfg.data)
    path = artifact.save(
        cfg.out,
        model,
        vocab,
        config=asdict(cfg),
        data_sha256=sha,
        metrics={"load_report": asdict(report), **summary},
        similar=similar,
    )
    val = summary["validation"]
    print(
        f"wrote {path} in {summary['seconds']}s; held-out customers: "
        + ", ".join(f"{k}={val[k]:.4f}" for k in ("hit@1", "hit@5", "hit@10", "hit@20", "mrr"))
        + f"; bought-together neighbours for {summary['similar_items']['with_neighbours']:,} of "
        f"{len(similar):,} products"
    )
    print(json.dumps({"artifact": str(path), "data_sha256": sha}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
