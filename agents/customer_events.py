"""The stream agent: every input topic (plus session merges) in micro-batches.

`Pipeline.process` dead-letters whatever input makes a batch fail, so nothing from input
reaches Faust's supervisor. It raises only if committing a batch fails (the producer's buffer
or the state store). The agent must not return to Faust then: `take_ready` acknowledges a
batch's events only when the agent asks for the next batch, so the supervisor's restart would
leave them unacknowledged, holding back every later commit of their partitions. The worker
exits at once instead, without committing: its events are read again after the restart.
"""

from __future__ import annotations

import logging
import os

from agents.pipeline import Pipeline
from agents.runtime.app import NextbestApp
from agents.runtime.microbatch import take_ready

log = logging.getLogger(__name__)
EXIT_UNCOMMITTED = 70  # EX_SOFTWARE


def register(nb: NextbestApp, pipeline: Pipeline) -> None:
    settings = nb.settings

    @nb.app.agent(nb.inputs, name="customer-events")
    async def customer_events(stream):  # noqa: ANN001 - a faust Stream
        async for events in take_ready(stream, settings.batch_size, settings.batch_window_s):
            try:
                await pipeline.process(events)
            except Exception:
                log.critical(
                    "committing a batch failed: exiting before its offsets are committed",
                    exc_info=True,
                )
                logging.shutdown()
                os._exit(EXIT_UNCOMMITTED)
