"""The model bench's pure figures (the bench itself is a command, not a test)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from agents.tools.bench_model import SERVING_LAYOUTS, pooled_p99_difference, previous_serving


def test_pooled_p99_difference_of_a_shift():
    """Latencies 5 ms slower everywhere: p99 is exactly 5 ms higher, inside the interval."""
    rules_only = np.random.default_rng(0).exponential(20.0, 2000)
    low, point, high = pooled_p99_difference(rules_only + 5.0, rules_only, draws=300)
    assert abs(point - 5.0) < 1e-9
    assert low < 5.0 < high
    low, point, high = pooled_p99_difference(rules_only, rules_only, draws=300)
    assert point == 0.0 and low < 0.0 < high


def _source_tree(root: Path, modules: dict[str, str]) -> Path:
    """A source tree holding ``modules`` (dotted name -> source), packages made as needed."""
    for name, source in modules.items():
        parts = name.split(".")
        for depth in range(1, len(parts)):
            package = root.joinpath(*parts[:depth])
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").touch()
        root.joinpath(*parts[:-1], f"{parts[-1]}.py").write_text(source)
    return root


@pytest.mark.parametrize("layout", SERVING_LAYOUTS)
def test_previous_serving_imports_each_layout_and_restores_this_one(tmp_path, layout):
    loader, encoding, serving = layout
    source = _source_tree(
        tmp_path,
        {
            "models.next_purchase": "",  # the flat layout's model module (else: the package)
            loader: "def load(path):\n    return ('loaded', str(path))\n",
            encoding: "def encode_batch():\n    pass\n",
            serving: "def served_history():\n    pass\n",
        },
    )
    ours = sys.modules["models"]
    previous = previous_serving(source, Path("artifact"))
    assert previous.recommender == ("loaded", "artifact")
    assert previous.encode_batch.__module__ == encoding
    assert previous.served_history.__module__ == serving
    assert sys.modules["models"] is ours and str(source) not in sys.path
