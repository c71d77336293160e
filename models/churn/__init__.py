"""Churn risk offline: evaluation of ``streams.state.churn`` on an order file."""
