"""The worker's next-purchase serving (`models.next_purchase.serving`), built from its Settings
and reporting to its Prometheus metrics."""

from __future__ import annotations

from agents.runtime.model_metrics import PrometheusServingObserver
from agents.runtime.settings import Settings
from models.next_purchase.serving import (
    MerchantModels,
    NextPurchasePolicy,
    NextPurchaseScorer,
    limit_torch_threads,
)
from streams.decisions import Policy


def serving_policy(settings: Settings, base: Policy) -> tuple[NextPurchasePolicy, MerchantModels]:
    """The model-backed policy for a worker; loads the models now (rules only until one loads):
    each merchant's own (`MerchantModels`), else ``NEXTBEST_MODEL_PATH``.

    Call ``store.start()`` to pick up new versions and merchants while the worker runs.
    """
    limit_torch_threads(settings.model_threads)
    observer = PrometheusServingObserver()
    store = MerchantModels(
        settings.model_path or None,
        settings.models_dir,
        reload_s=settings.model_reload_s,
        observer=observer,
    )
    store.refresh()
    scorer = NextPurchaseScorer(
        store,
        top_k=settings.model_top_k,
        observer=observer,
        add_on_min_similarity=settings.add_on_min_similarity,
    )
    return NextPurchasePolicy(base, scorer), store
