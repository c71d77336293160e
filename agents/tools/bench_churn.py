"""What churn risk adds to every event (``nextbest bench-churn``): `customer_state.apply_event`
over a mix of clicks, cart changes and orders, with `streams.state.churn.update` and with it
replaced by a no-op (what the worker ran before churn risk), in interleaved rounds in one process.

The customer starts with every bounded list full (50 orders, 20 sent messages, 20 views), the
most work the score's inputs can take; ``--order-every`` sets how often an order comes (each one
is rescored). Prints each variant's median and best round in µs per event, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from unittest import mock

from streams.state import churn
from streams.state import customer_state as cs

T0 = 1_320_000_000.0  # 2011-10-30


def full_customer() -> dict:
    """A customer with every bounded list of the score's inputs full."""
    state = cs.new_state()
    for k in range(cs.MAX_ORDERS):
        lines = [{"product_id": f"{20000 + k}", "quantity": 1, "unit_price": 12.75}]
        order = {"event_id": f"o{k}", "event_type": "order", "_ts": T0 - (200 - k) * 86400.0}
        cs.apply_event(
            state, "orders", {**order, "order_id": f"{k}", "lines": lines, "total": 12.75}
        )
    for k in range(cs.MAX_VIEWS):
        view = {"event_id": f"v{k}", "event_type": "product_view", "product_id": f"{20000 + k}"}
        cs.apply_event(state, "clickstream", {**view, "_ts": T0 - 3600.0 + k})
    for k in range(cs.MAX_SENT):
        cs.record_message(state, "email", f"m{k}", T0 - 1800.0 + k)
    return state


def events(count: int, order_every: int) -> Iterator[tuple[str, dict]]:
    """Events 30 s apart: an order every ``order_every``, else 2 clicks to 1 cart change."""
    line = [{"product_id": "22423", "quantity": 1, "unit_price": 12.75}]
    for i in range(count):
        base = {"event_id": f"e{i}", "_ts": T0 + 30.0 * i}
        if order_every and i % order_every == order_every - 1:
            order = {"event_type": "order", "order_id": f"n{i}", "lines": line, "total": 12.75}
            yield "orders", {**base, **order}
        elif i % 3 == 2:
            cart = {"event_type": "cart_add", "lines": line, "cart_value": 12.75, "currency": "GBP"}
            yield "cart", {**base, **cart}
        else:
            yield "clickstream", {**base, "event_type": "product_view", "product_id": "85123A"}


def _round(batch: list[tuple[str, dict]], update: Callable[..., None]) -> float:
    """µs per event of one pass over ``batch`` from a full customer."""
    with mock.patch.object(churn, "update", update):
        state = full_customer()
        start = time.perf_counter()
        for kind, event in batch:
            cs.apply_event(state, kind, event)
        return (time.perf_counter() - start) / len(batch) * 1e6


def measure(count: int, rounds: int, order_every: int) -> dict[str, list[float]]:
    batch = list(events(count, order_every))
    real = churn.update
    variants = {"with churn": real, "without": lambda state, kind, event: None}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            results[name].append(_round(batch, variants[name]))
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nextbest bench-churn", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=8, help="per variant, interleaved")
    p.add_argument("--order-every", type=int, default=10, help="one order per this many events")
    args = p.parse_args(argv)
    results = measure(args.events, args.rounds, args.order_every)
    for name, runs in results.items():
        print(
            f"{name:<11} median {statistics.median(runs):6.2f} µs/event, best "
            f"{min(runs):6.2f}  (rounds: {', '.join(f'{r:.2f}' for r in runs)})"
        )
    with_churn, without = results["with churn"], results["without"]
    added = statistics.median(with_churn) - statistics.median(without)
    print(
        f"added by churn.update: median {added:.2f} µs/event, best "
        f"{min(with_churn) - min(without):.2f}; ratio of the medians "
        f"{statistics.median(with_churn) / statistics.median(without):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
