"""How many examples the property-based (hypothesis) tests draw.

The default suite draws a sample (``examples(n)`` is ``n``); the soak step of .ci/run
runs every hypothesis test again with PYEBPF_EXAMPLES_SCALE=5, a five times deeper
search. A test's own environment override, where it has one, still wins.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("PYEBPF_EXAMPLES_SCALE", "1"))


def examples(n: int) -> int:
    """``n`` examples, scaled by PYEBPF_EXAMPLES_SCALE."""
    return max(1, round(n * SCALE))
