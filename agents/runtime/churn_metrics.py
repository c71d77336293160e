"""Prometheus figures of churn risk and the retention journey (names shared with the Grafana
dashboard: docs/operations.md#metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from agents.runtime.metrics import REGISTRY

CHURN_RISK = Histogram(
    "nextbest_churn_risk_score",
    "The churn risk (streams.state.churn) of a customer with orders at each order or cart event",
    ["merchant"],
    buckets=tuple(round(0.1 * k, 1) for k in range(1, 11)),
    registry=REGISTRY,
)
RETENTION_STEPS = Counter(
    "nextbest_retention_journey_steps",
    "Retention journey steps by arm: treated (sent) or holdout (would have been sent)",
    ["merchant", "arm"],
    registry=REGISTRY,
)
