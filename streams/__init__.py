"""The pure domain: what nextbest does with each event, as plain functions over plain data.

No Faust, no Kafka, no Prometheus here (checked by import-linter): customer state
(`streams.state`), merchants and their promotions (`streams.merchants`), cart decisions
(`streams.decisions`: the `Policy` protocol and the threshold rules; `streams.promotion`: the
learned promotion policy), messages and journeys (`streams.outreach`) and event-time timers
(`streams.timers`).
"""
