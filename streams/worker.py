"""Build the worker from Settings and run it until SIGTERM/SIGINT."""

from __future__ import annotations

import faust
import mode.loop

from agents import api, catalog_updates, customer_events, monitoring, outreach, state_api
from agents.pipeline import Pipeline
from streams.app import NextbestApp, create_app
from streams.policy import Policy, ThresholdRulesPolicy
from streams.settings import Settings
from streams.topics import ensure_topics


def build(
    settings: Settings,
    policy: Policy | None = None,
    pipeline: type[Pipeline] = Pipeline,
    models: api.ModelLookup | None = None,
) -> NextbestApp:
    nb = create_app(settings)
    policy = policy or ThresholdRulesPolicy()
    customer_events.register(nb, pipeline(nb, policy, outreach.register(nb, policy)))
    monitoring.register(nb)
    state_api.register(nb)
    api.register(nb, policy, models)
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
    if settings.model_path:  # torch is imported only when a model is configured
        from streams.model_policy import ModelPipeline, serving_policy

        policy, model_store = serving_policy(settings, ThresholdRulesPolicy())
        nb = build(settings, policy, ModelPipeline, models=lambda _merchant: model_store.current)
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
