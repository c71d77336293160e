"""Reference Faust agents for ``nextbest bench``: (b) bare iteration, (c) the naive pattern.

Run as ``python -m agents.tools.bench_apps <bare|naive> <events> <result-file> <app-id>`` with the
NEXTBEST_* environment of the bench's broker (the app id is the consumer group). Each writes
``first_event_time end_time`` to the result file after ``events`` events and keeps running
until terminated.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import faust
import mode.loop

from agents.runtime.app import faust_config
from agents.runtime.settings import Settings
from agents.worker import run_faust_worker


def main(mode_name: str, events: int, result: Path, app_id: str) -> None:
    mode.loop.use("uvloop")
    settings = Settings.from_env()
    app = faust.App(app_id, **faust_config(settings))
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    source = app.topic(*settings.topics.inputs, **raw)
    sink = app.topic("bench.naive-out", partitions=settings.partitions, **raw)
    counts = app.Table(
        "bench-counts", default=int, partitions=settings.partitions, key_type=bytes, value_type=int
    )
    seen = {"n": 0, "first": 0.0}

    def tick() -> None:
        seen["n"] += 1
        if seen["n"] == 1:
            seen["first"] = time.time()
        if seen["n"] == events:
            result.write_text(f"{seen['first']} {time.time()}\n")

    if mode_name == "bare":

        @app.agent(source)
        async def bare(stream):  # noqa: ANN001
            async for _ in stream:
                tick()
    else:

        @app.agent(source)
        async def naive(stream):  # noqa: ANN001
            async for key, value in stream.items():
                counts[key] += 1
                await sink.send(key=key, value=value)
                tick()

    run_faust_worker(app, "warn")  # the same worker set-up as nextbest's, for a fair comparison


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
