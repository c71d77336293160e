"""Engagement actions ranked per customer: eligibility, the take model and Thompson ranking
(`ranking`), take windows and their rewards joined in the customer's state (`rewards`), and
how a ranking meets a cart's offer (`serving`). Pure functions over plain data."""
