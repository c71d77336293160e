"""Prometheus metrics of a worker, served at ``/metrics`` by the worker's web server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "nextbest_events",
    "Input events received, by merchant, topic and event type",
    ["merchant", "topic", "event_type"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "nextbest_dead_letters",
    "Inputs sent to the dead-letter topic, by reason",
    ["reason"],
    registry=REGISTRY,
)
OUTPUT_ERRORS = Counter(
    "nextbest_output_errors",
    "Records the producer or the broker refused (too large), by topic: logged and dropped, "
    "the worker goes on",
    ["topic"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "nextbest_duplicate_events",
    "Input events skipped because their event_id was already applied",
    registry=REGISTRY,
)
REROUTED = Counter(
    "nextbest_rerouted_events",
    "Input events that arrived with a wrong record key and were re-keyed to the right partition",
    registry=REGISTRY,
)
OFFERS = Counter(
    "nextbest_offers",
    "Offers emitted, by merchant and offer type",
    ["merchant", "offer_type"],
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "nextbest_notifications",
    "Notifications emitted, by merchant and channel",
    ["merchant", "channel"],
    registry=REGISTRY,
)
SUPPRESSED = Counter(
    "nextbest_messages_suppressed",
    "Notifications not sent, by merchant and reason (frequency_cap, no_consent, opted_out, "
    "duplicate, ...)",
    ["merchant", "reason"],
    registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "nextbest_decision_latency_seconds",
    "From the cart change (its Kafka record timestamp) to the offer being emitted",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
BATCH_EVENTS = Histogram(
    "nextbest_batch_events",
    "Events per processed micro-batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
    registry=REGISTRY,
)
STATE_CUSTOMERS = Gauge(
    "nextbest_state_customers",
    "Customer and session records held by this worker (estimate)",
    registry=REGISTRY,
)
STATE_BYTES = Gauge(
    "nextbest_state_bytes",
    "Bytes of customer state held by this worker (RocksDB estimate)",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "nextbest_consumer_lag",
    "Records behind the fetch high watermark, by topic and partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "nextbest_model_info",
    "The next-purchase model version serving cart decisions (1 for the loaded version)",
    ["version"],
    registry=REGISTRY,
)
MODEL_RELOADS = Counter(
    "nextbest_model_reloads",
    "Next-purchase model versions loaded and swapped in (the first load included)",
    registry=REGISTRY,
)
MODEL_LOAD_ERRORS = Counter(
    "nextbest_model_load_errors",
    "Next-purchase model versions that failed to load; the previous model kept serving",
    registry=REGISTRY,
)
MODEL_FALLBACKS = Counter(
    "nextbest_model_fallbacks",
    "Cart decisions made rules-only, by reason (unavailable: no model loaded; error: failed)",
    ["reason"],
    registry=REGISTRY,
)
MODEL_PREDICTIONS = Counter(
    "nextbest_model_predictions",
    "Next-purchase predictions attached to decisions, by source (model or per-customer cache)",
    ["source"],
    registry=REGISTRY,
)
MODEL_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1)
MODEL_INFERENCE_LATENCY = Histogram(
    "nextbest_model_inference_seconds",
    "Wall time of one batched next-purchase inference (encoding included), per micro-batch",
    buckets=MODEL_BUCKETS,
    registry=REGISTRY,
)
MODEL_INFERENCE_CPU = Histogram(
    "nextbest_model_inference_cpu_seconds",
    "CPU time of the event loop's thread in one batched next-purchase inference (what it costs "
    "on a core of its own; the wall time above also counts waiting for a shared core)",
    buckets=MODEL_BUCKETS,
    registry=REGISTRY,
)

# --- promotion policy (agents.runtime.promotion_metrics updates these)
# ----------------------------------
PROMO_DECISIONS = Counter(
    "nextbest_promo_decisions",
    "Promotion-policy decisions, by merchant, experiment arm, action kind and whether an offer "
    "was sent",
    ["merchant", "arm", "action_kind", "sent"],
    registry=REGISTRY,
)
PROMO_BLOCKED = Counter(
    "nextbest_promo_blocked_actions",
    "Candidate actions a guard rail blocked, by reason (budget, customer_limit, exclusive, ...)",
    ["reason"],
    registry=REGISTRY,
)
PROMO_REWARDS = Counter(
    "nextbest_promo_rewards",
    "Decisions whose attribution window closed, by merchant, arm and reason",
    ["merchant", "arm", "reason"],
    registry=REGISTRY,
)
PROMO_CONVERSIONS = Counter(
    "nextbest_promo_conversions",
    "Closed decisions with an attributed order, by merchant and arm",
    ["merchant", "arm"],
    registry=REGISTRY,
)
PROMO_REVENUE = Counter(
    "nextbest_promo_revenue",
    "Attributed order revenue in the merchant's currency, by merchant and arm",
    ["merchant", "arm"],
    registry=REGISTRY,
)
PROMO_DISCOUNT_COST = Counter(
    "nextbest_promo_discount_cost",
    "Discounts paid on attributed orders in the merchant's currency, by merchant and arm",
    ["merchant", "arm"],
    registry=REGISTRY,
)
PROMO_PROFIT = Summary(
    "nextbest_promo_profit",
    "Profit per closed decision in the merchant's currency, by merchant and arm",
    ["merchant", "arm"],
    registry=REGISTRY,
)
PROMO_PROFIT_SQUARES = Counter(
    "nextbest_promo_profit_squares",
    "Sum of squared profit per closed decision (with the summary's sum and count: a CI)",
    ["merchant", "arm"],
    registry=REGISTRY,
)
PROMO_INCREMENTAL = Gauge(
    "nextbest_promo_incremental_profit_per_decision",
    "Mean profit per closed decision minus the holdout's, by merchant and arm (this worker)",
    ["merchant", "arm"],
    registry=REGISTRY,
)
PROMO_BUDGET_AVAILABLE = Gauge(
    "nextbest_promo_budget_available",
    "Promotion budget not yet spent or reserved in this worker's ledgers, by promotion",
    ["merchant", "promotion"],
    registry=REGISTRY,
)

# --- journeys (agents.outreach, streams.outreach.journeys)
# --------------------------------------------
JOURNEY_STEPS = Counter(
    "nextbest_journey_steps",
    "Journey steps by merchant, journey, step and outcome: sent, held (quiet hours), "
    "suppressed (reason: the delivery rule) or cancelled before firing (reason: what ended it)",
    ["merchant", "journey", "step", "outcome", "reason"],
    registry=REGISTRY,
)
MESSAGES_HELD = Counter(
    "nextbest_messages_held",
    "Journey messages held for quiet hours (once per message), by merchant and source",
    ["merchant", "source"],
    registry=REGISTRY,
)
MESSAGES_RELEASED = Counter(
    "nextbest_messages_released",
    "Held journey messages asked about again when their hold ended, by outcome (sent or "
    "suppressed); held minus released is still waiting or was cancelled",
    ["merchant", "source", "outcome"],
    registry=REGISTRY,
)
JOURNEY_TIMERS_PENDING = Gauge(
    "nextbest_journey_timers_pending",
    "Customers with a journey wake-up in this worker's due-time index (a cancelled timer "
    "stays until its time has passed)",
    registry=REGISTRY,
)

# --- REST API (agents.web.api) -------------------------------------------------------------------
API_REQUESTS = Counter(
    "nextbest_api_requests",
    "REST API requests by route template (never the raw path), method and status code; a "
    "request forwarded to the owning worker counts on both",
    ["route", "method", "status"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "nextbest_api_request_duration_seconds",
    "REST API request handling time (forwarding to the owning worker included), by route",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
ENGAGEMENT_RANKED = Counter(
    "nextbest_engagement_actions_ranked",
    "Engagement actions returned first-ranked for a customer (on a cart decision or by "
    "GET /next-best-actions), by merchant and action",
    ["merchant", "action"],
    registry=REGISTRY,
)
ENGAGEMENT_FEEDBACK = Counter(
    "nextbest_engagement_action_feedback",
    "Engagement action feedback events applied, by merchant, action and interaction "
    "(shown, taken, dismissed)",
    ["merchant", "action", "interaction"],
    registry=REGISTRY,
)
