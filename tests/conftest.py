"""Hypothesis profiles: a few hundred examples per property (seconds, not minutes), no deadline
(the CPUs are shared); derandomized in CI (``CI`` set) so a run there is reproducible."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
