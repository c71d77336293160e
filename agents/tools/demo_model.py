"""The next-purchase model in ``nextbest demo``: find or quickly train an artifact, give the
worker the customers' order history before the replayed day, and summarise what it served."""

from __future__ import annotations

import subprocess
import sys
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
    """The version the worker would serve from ``root``, or None if it has none that loads."""
    import logging

    from models.next_purchase.serving import ModelStore

    # a version that fails to load is said below instead
    logging.getLogger("models.next_purchase.serving").setLevel(logging.CRITICAL)
    store = ModelStore(root)
    store.refresh()
    return store.current.version if store.current else None


def prepare_model(root: Path, file: Path, cutoff: datetime) -> Path | None:
    """``root`` if it holds an artifact that loads, else a quickly trained one there; None if
    that fails."""
    version = loads(root) if (root / "latest").is_file() else None
    if version:
        print(f"next-purchase model: {root / version}")
        return root
    why = "none that loads with this code" if (root / "latest").is_file() else "none"
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


def model_line(offer: dict) -> str:
    """The next-purchase model's part of an offer in the live tail ("" without a model)."""
    if not offer.get("model_version"):
        return ""
    coupon = offer["coupon_product_id"]
    name = PRODUCT_NAMES.get(coupon, "")[:32]
    return (
        f"\n{'':>27}coupon {coupon} {name!r} p={offer['coupon_probability']:.2f} · add-ons "
        f"{', '.join(offer['recommendations'][1:4])} · propensity "
        f"{offer['purchase_propensity']:.2f}"
    )


def model_summary(totals: dict[str, float], offers: int, with_model: int) -> None:
    batches = totals.get("nextbest_model_inference_seconds_count", 0)
    mean_ms = totals.get("nextbest_model_inference_seconds_sum", 0) / max(batches, 1) * 1000
    predictions = totals.get("nextbest_model_predictions_total", 0)
    fallbacks = totals.get("nextbest_model_fallbacks_total", 0)
    served = f"recommendations on {with_model:,} of {offers:,} offers; " if with_model else ""
    print(
        f"  next-purchase      {served}{predictions:,.0f} predictions (the promotion policy's "
        f"signals), {batches:,.0f} batched inferences (mean {mean_ms:.1f} ms); "
        f"{fallbacks:,.0f} rules-only fallbacks"
    )
