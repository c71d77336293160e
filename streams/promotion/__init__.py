"""The learned promotion policy: actions and their cost, the objective, guard rails, features,
the Thompson-sampling bandit, experiments (holdout, arms) and reward attribution."""
