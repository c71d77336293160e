"""Build the worker from Settings and run it until SIGTERM/SIGINT."""

from __future__ import annotations

import gc

import faust
import mode.loop
from threadpoolctl import ThreadpoolController

from agents import catalog_updates, customer_events, engagement, monitoring, outreach, promotion
from agents.pipeline import Pipeline
from agents.runtime.app import NextbestApp, create_app
from agents.runtime.settings import Settings, merchant_models_present
from agents.runtime.topics import ensure_topics
from agents.web import api
from streams.decisions import Policy, ThresholdRulesPolicy
from streams.promotion.policy import SignalsProvider


def one_blas_thread() -> None:
    """numpy's and scipy's OpenBLAS run with one thread in this process, whatever the policy.
    The promotion bandit's and the engagement take models' linear algebra is small (a Cholesky
    factor of a few hundred rows per model refresh, a matrix-vector product of a few dozen rows
    per decision or ranking): a second BLAS thread only spins against the worker's other
    threads; on a busy machine decisions took 2-3x longer with it, and a take model's learning
    and ranking 10x."""
    ThreadpoolController().select(prefix="libscipy_openblas").limit(limits=1)


def build(
    settings: Settings,
    policy: Policy | None = None,
    models: api.ModelLookup | None = None,
    signals: SignalsProvider | None = None,
) -> NextbestApp:
    """The worker's app. ``NEXTBEST_POLICY=promotion`` decides carts with the promotion policy
    (``signals``: next-purchase signals for its features and product coupons); the REST API's
    ``/best-promotion`` then answers with the catalog rules, which change no state."""
    one_blas_thread()
    nb = create_app(settings)
    rules = ThresholdRulesPolicy()
    hooks = None
    if settings.policy == "promotion":
        hooks = promotion.register(nb, signals)
        policy = hooks.policy
    policy = policy or rules
    actions = engagement.register(nb)
    journeys = outreach.register(nb, policy, actions.for_message)
    pipeline = Pipeline(nb, policy, journeys, hooks, actions)
    customer_events.register(nb, pipeline)
    monitoring.register(nb)
    api.register(nb, rules if hooks is not None else policy, models, actions)
    return nb


def run_faust_worker(app: faust.App, loglevel: str) -> None:
    """Run ``app`` until SIGTERM/SIGINT, without Faust's terminal spinner.

    The spinner sets the root logger to DEBUG so that it can spin on every record: every
    debug call on the hot path (several per event in aiokafka and faust) then builds a
    LogRecord that no handler prints.
    """
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


def run_worker(settings: Settings) -> None:
    mode.loop.use("uvloop")
    ensure_topics(settings)
    model_store = None
    if settings.model_path or merchant_models_present(settings.models_dir):
        # torch is imported only when a model is configured
        from agents.model_serving import serving_policy

        policy, model_store = serving_policy(settings, ThresholdRulesPolicy())
        nb = build(settings, policy, models=model_store.for_merchant, signals=policy.scorer.signals)
        # torch brings ~160k long-lived objects that every full collection scanned (pauses of
        # 200-260 ms mid-stream; 15-40 ms with them frozen): keep start-up objects out of it
        gc.freeze()
        model_store.start()
    else:
        nb = build(settings)
    watcher = catalog_updates.CatalogWatcher(settings, nb.registry)
    watcher.start()
    try:
        run_faust_worker(nb.app, settings.log_level)
    finally:
        watcher.stop()
        if model_store is not None:
            model_store.stop()
