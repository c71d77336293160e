"""Prometheus figures of next-purchase model serving (definitions in ``agents.runtime.metrics``):
the `ServingObserver` a worker that serves a model passes to `models.next_purchase.serving`."""

from __future__ import annotations

import contextlib

from agents.runtime import metrics
from models.next_purchase.serving import ServingObserver


class PrometheusServingObserver(ServingObserver):
    """Model loads, load errors, fallbacks, predictions and inference time as the worker's
    ``nextbest_model_*`` metrics."""

    def model_loaded(self, version: str, replaced: str | None) -> None:
        if replaced is not None:
            with contextlib.suppress(KeyError):  # another store may serve it too
                metrics.MODEL_INFO.remove(replaced)
        metrics.MODEL_INFO.labels(version).set(1)
        metrics.MODEL_RELOADS.inc()

    def load_failed(self) -> None:
        metrics.MODEL_LOAD_ERRORS.inc()

    def fell_back(self, reason: str, decisions: int) -> None:
        metrics.MODEL_FALLBACKS.labels(reason).inc(decisions)

    def predicted(self, source: str, count: int) -> None:
        metrics.MODEL_PREDICTIONS.labels(source).inc(count)

    def inferred(self, wall_s: float, cpu_s: float) -> None:
        metrics.MODEL_INFERENCE_LATENCY.observe(wall_s)
        metrics.MODEL_INFERENCE_CPU.observe(cpu_s)
