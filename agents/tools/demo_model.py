"""The next-purchase model in ``nextbest demo``: find or quickly train an artifact, give the
worker the customers' order history before the replayed day, and summarise what it served."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from agents.runtime.settings import Settings
from agents.tools.processes import scrape
from agents.tools.replay import ReplayEvent, replay_events, send

QUICK_EPOCHS = 4
QUICK_BUDGET_S = 120
PRODUCT_NAMES: dict[str, str] = {}  # product id -> description, from the replayed order lines


def loads(root: Path) -> str | None:
    """The version the worker would serve from ``root``, or None if it has none that loads
    with its bought-together table (a version trained before the table is retrained)."""
    import logging

    from models.next_purchase.serving import ModelStore

    # a version that fails to load is said below instead
    logging.getLogger("models.next_purchase.serving").setLevel(logging.CRITICAL)
    store = ModelStore(root)
    store.refresh()
    if store.current is None or store.current.similar is None:
        return None
    return store.current.version


def prepare_model(root: Path, file: Path, cutoff: datetime) -> Path | None:
    """``root`` if it holds an artifact that loads, else a quickly trained one there; None if
    that fails."""
    version = loads(root) if (root / "latest").is_file() else None
    if version:
        print(f"next-purchase model: {root / version}")
        return root
    why = (
        "none that loads with this code (and has a bought-together table)"
        if (root / "latest").is_file()
        else "none"
    )
    print(
        f"next-purchase model: {why} in {root}; training a quick one first ({QUICK_EPOCHS} epochs "
        f"at most, on orders before {cutoff:%Y-%m-%d}; a few minutes on 2 cores).\n"
        "  `nextbest train` trains the full model; the demo then uses it."
    )
    command = [
        sys.executable, "-m", "agents.tools.cli", "train", "--data", str(file), "--out", str(root),
        "--cutoff", f"{cutoff:%Y-%m-%d}", "--max-epochs", str(QUICK_EPOCHS),
        "--time-budget-s", str(QUICK_BUDGET_S),
    ]  # fmt: skip
    if subprocess.run(command).returncode != 0 or not loads(root):
        print("training failed: the demo runs with the threshold rules only")
        return None
    return root


def send_order_history(settings: Settings, file: Path, window: list[ReplayEvent], port: int) -> int:
    """Replay the earlier orders (and profiles) of the customers in ``window`` as fast as
    possible and wait until the worker has them: the state then holds the histories the model
    scores. Returns the number of events sent."""
    customers = {e.value["customer_id"] for e in window if e.value.get("customer_id")}
    start = datetime.fromtimestamp(window[0].ts, UTC).replace(tzinfo=None)
    history = [
        e
        for e in replay_events(file, end=start)
        if e.topic_kind in ("orders", "profiles") and e.value.get("customer_id") in customers
    ]
    print(
        f"loading the order history of the {len(customers):,} customers of the replay: "
        f"{len(history):,} earlier orders and profiles"
    )
    for event in (*history, *window):
        for line in event.value.get("lines", ()):
            PRODUCT_NAMES.setdefault(line["product_id"], line.get("description") or "")
    send(history, settings)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        totals = scrape(port)
        if totals.get("nextbest_events_total", 0) + totals.get(
            "nextbest_dead_letters_total", 0
        ) >= len(history):
            break
        time.sleep(0.5)
    return len(history)


def _named(product: str) -> str:
    """``85123A White Hanging Heart…``: the id and the start of the replayed description."""
    name = textwrap.shorten(PRODUCT_NAMES.get(product, "").title(), 24, placeholder="…")
    return f"{product} {name}".strip()


def model_line(offer: dict) -> str:
    """The models' part of an offer in the live tail ("" without them): its add-ons by source
    (bought together with the cart, the customer's predicted next purchase), and the coupon
    candidate and propensity when the offer carries the next-purchase fields."""
    lines = []
    sources = offer.get("recommendation_sources") or ()
    by_source: dict[str, list[str]] = {}
    for product, source in zip(offer.get("recommendations") or (), sources, strict=True):
        by_source.setdefault(source, []).append(product)
    together, predicted = by_source.get("bought_together"), by_source.get("next_purchase")
    if together or predicted:
        parts = [f"bought together: {', '.join(map(_named, together[:3]))}"] if together else []
        if predicted:
            parts.append(f"next purchase: {', '.join(map(_named, predicted[:2]))}")
        lines.append("add-ons  " + " · ".join(parts))
    if offer.get("model_version"):
        lines.append(
            f"coupon {_named(offer['coupon_product_id'])} p={offer['coupon_probability']:.2f} · "
            f"propensity {offer['purchase_propensity']:.2f}"
        )
    return "".join(f"\n{'':>27}{line}" for line in lines)


def model_summary(
    totals: dict[str, float], offers: int, with_model: int, bought_together: int = 0
) -> None:
    batches = totals.get("nextbest_model_inference_seconds_count", 0)
    mean_ms = totals.get("nextbest_model_inference_seconds_sum", 0) / max(batches, 1) * 1000
    predictions = totals.get("nextbest_model_predictions_total", 0)
    fallbacks = totals.get("nextbest_model_fallbacks_total", 0)
    served = f"recommendations on {with_model:,} of {offers:,} offers; " if with_model else ""
    served += f"bought-together add-ons on {bought_together:,} of {offers:,} offers; "
    print(
        f"  next-purchase      {served}{predictions:,.0f} predictions (the promotion policy's "
        f"signals), {batches:,.0f} batched inferences (mean {mean_ms:.1f} ms); "
        f"{fallbacks:,.0f} rules-only fallbacks"
    )
