"""The stream agent: every input topic (plus session merges) in micro-batches."""

from __future__ import annotations

from agents.pipeline import Pipeline
from agents.runtime.app import NextbestApp


def register(nb: NextbestApp, pipeline: Pipeline) -> None:
    settings = nb.settings

    @nb.app.agent(nb.inputs, name="customer-events")
    async def customer_events(stream):  # noqa: ANN001 - a faust Stream
        async for events in stream.take_events(settings.batch_size, within=settings.batch_window_s):
            await pipeline.process(events)
