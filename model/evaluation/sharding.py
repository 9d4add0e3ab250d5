"""Evaluation over several processes: the same command under `torchrun` or `accelerate launch`.

Each process answers its own share of the volumes (contiguous runs of the seeded volume order,
balanced by question count) into its own part file of the answers folder; the processes wait
for each other, and the first one reads every part and writes the figures. A volume's answers do
not depend on which process made them, so the figures equal those of one process.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Shards are balanced by question count, but a slow volume read can still hold one process back.
_BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Shard:
    """This process's place in a launch (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


class Group:
    """The launch's processes: rank/world from the launcher's environment, and a barrier
    (accelerate's process state: gloo on the CPU, NCCL on GPUs). `shard` and `wait` given
    explicitly stand in for a launcher (threads in the tests)."""

    def __init__(self, shard: Shard | None = None, wait: Callable[[], Any] | None = None) -> None:
        self._wait = wait
        if shard is not None:
            self.shard = shard
            return
        self.shard = Shard()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available(), timeout=_BARRIER_TIMEOUT)
            self.shard = Shard(state.process_index, state.num_processes)
            self._wait = state.wait_for_everyone

    def wait(self) -> None:
        """Block until every process got here (a no-op alone)."""
        if self._wait is not None:
            self._wait()


def split(weights: Sequence[int], world: int) -> list[range]:
    """Contiguous index ranges, one per process, with about equal total weight each."""
    total = sum(weights)
    bounds, running, k = [0], 0, 0
    for rank in range(1, world):
        target = total * rank / world
        while k < len(weights) and running + weights[k] / 2 <= target:
            running += weights[k]
            k += 1
        bounds.append(k)
    bounds.append(len(weights))
    return [range(bounds[r], bounds[r + 1]) for r in range(world)]
