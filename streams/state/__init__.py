"""Per-customer rolling state: the record kept in the ``customers`` table and the product rule."""
