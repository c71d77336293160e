"""The Faust runtime: the app and its tables, settings, topics, transport, Prometheus metrics."""
