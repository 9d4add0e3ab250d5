"""Worker-process helpers (model/processes.py): arrays handed over through shared memory arrive
whole and free their block; a worker's priority is lowered below the viewer's."""
from __future__ import annotations

import multiprocessing
import os
import sys

import numpy as np
import pytest

from model.processes import PROCESS_NICENESS, from_shared, lower_priority, to_shared


def _echo_sum(name: str, specs: list, out) -> None:
    arrays = from_shared(name, specs)
    out.put([float(a.astype(np.float64).sum()) for a in arrays] + [arrays[1].dtype.str, list(arrays[0].shape)])


def test_arrays_cross_to_another_process_and_free_their_block() -> None:
    from multiprocessing import shared_memory

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(5, 7, 3)).astype(np.float32), np.arange(11, dtype=np.int16)]
    name, specs = to_shared(arrays)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_echo_sum, args=(name, specs, out))
    process.start()
    result = out.get(timeout=60)
    process.join(timeout=60)
    assert process.exitcode == 0
    assert result[:2] == pytest.approx([float(a.astype(np.float64).sum()) for a in arrays])
    assert result[2:] == [np.dtype(np.int16).str, [5, 7, 3]]
    with pytest.raises(FileNotFoundError):  # the receiver freed it: nothing is left in /dev/shm
        shared_memory.SharedMemory(name=name)


def test_arrays_come_back_equal_in_this_process() -> None:
    arrays = [np.linspace(-1000, 1000, 60, dtype=np.float32).reshape(3, 4, 5), np.zeros((0,), np.float32)]
    back = from_shared(*to_shared(arrays))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, back))


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no process priorities on this platform")
def test_a_worker_yields_to_the_viewer() -> None:
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=sys.exit, args=(0,))
    own = os.getpriority(os.PRIO_PROCESS, 0)
    process.start()
    try:
        lower_priority(process.pid)
        assert os.getpriority(os.PRIO_PROCESS, process.pid) >= PROCESS_NICENESS
    except ProcessLookupError:  # it already ended: nothing to check on this machine
        pytest.skip("the process ended before its priority could be read")
    finally:
        process.join(timeout=60)
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the viewer kept its own priority
