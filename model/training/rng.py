"""Random-generator states through `torch.load(weights_only=True)`, which returns tuples as lists
and cannot hold numpy arrays: both training loops checkpoint their data order this way."""
from __future__ import annotations

from typing import Any


def random_state(value: Any) -> Any:
    """A `random.Random` state back from a checkpoint (lists where the generator wants tuples)."""
    return tuple(random_state(v) for v in value) if isinstance(value, (list, tuple)) else value
