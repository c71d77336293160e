"""What the learned models share: the sufficient statistics of a Bayesian linear model learned
once per reward (`linear`), and a model kept apart per merchant and input partition so that
workers share it (`partitioned`). Pure functions over plain data."""
