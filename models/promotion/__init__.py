"""Offline promotion work: uplift (Hillstrom), the customer-response simulator, the decision
log, off-policy evaluation and the report."""
