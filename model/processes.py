"""Worker processes that end with the viewer that started them (the model server, the prior
registration): a SIGKILLed or crashed napari runs no clean-up, and an orphan would hold its memory,
or block forever on a queue nobody reads, for as long as the machine runs.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

PARENT_POLL_S = 0.5
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: Scheduling priority of the viewer's worker processes: lower than napari's, so the GUI wins the CPU.
PROCESS_NICENESS = 10


def lower_priority(pid: int = 0) -> None:
    """Give process `pid` (0: this one) at least `PROCESS_NICENESS`. The viewer calls it on a
    worker it has just started, so the worker's start-up imports already yield to the GUI."""
    with contextlib.suppress(OSError, AttributeError):  # no priorities on some platforms: run as is
        os.setpriority(os.PRIO_PROCESS, pid, max(os.getpriority(os.PRIO_PROCESS, pid), PROCESS_NICENESS))


def yield_to_viewer() -> int:
    """Lower this worker's priority and return the threads it should use (one core left to the
    viewer). Why: the viewer redraws on the GUI thread; a worker at the same priority using every
    core (torch's pool, SimpleITK's registration threads) starves it, and the radiologist sees the
    canvas stall (bench/chat_responsiveness.py)."""
    lower_priority()
    return max(1, (os.cpu_count() or 2) - 1)


def to_shared(arrays: Sequence[np.ndarray]) -> tuple[str, list[tuple[tuple[int, ...], str]]]:
    """Arrays copied into one shared-memory block: its name and each array's shape and dtype, for
    `from_shared` in another process. Why: a queue pickles a scan and pipes it through, which costs
    the receiving viewer's GUI thread tens of milliseconds per 16 MB; shared memory costs one copy."""
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(create=True, size=max(1, sum(a.nbytes for a in arrays)))
    offset = 0
    for array in arrays:
        np.ndarray(array.shape, array.dtype, buffer=block.buf, offset=offset)[...] = array
        offset += array.nbytes
    name = block.name
    block.close()
    return name, [(tuple(int(n) for n in a.shape), a.dtype.str) for a in arrays]


def from_shared(name: str, specs: Sequence[tuple[Sequence[int], str]]) -> list[np.ndarray]:
    """The arrays `to_shared` put in block `name`, copied out; the block is then freed."""
    from multiprocessing import shared_memory

    # The viewer and its workers share one resource tracker (spawned children inherit it), so the
    # block stays registered once whoever attached, and `unlink` below unregisters it.
    block = shared_memory.SharedMemory(name=name)
    try:
        arrays, offset = [], 0
        for shape, dtype in specs:
            kind = np.dtype(dtype)
            arrays.append(np.ndarray(tuple(shape), kind, buffer=block.buf, offset=offset).copy())
            offset += int(np.prod(shape)) * kind.itemsize
    finally:
        block.close()
        block.unlink()
    return arrays


def end_with_parent(parent_pid: int, signal_on_death: bool = True) -> None:
    """Make this process end when `parent_pid` (napari) does, however it ends: a SIGKILLed or
    crashed napari runs no clean-up, and an orphaned model process would hold its memory for as
    long as the machine runs.

    Two mechanisms: on Linux the kernel's parent-death signal (`prctl(PR_SET_PDEATHSIG)`), which
    is immediate; everywhere a watchdog thread that exits the process once its parent is no longer
    `parent_pid` (the orphan is re-parented). The signal is tied to the parent's *thread* that
    started this process, so it is only asked for when that was the parent's main thread
    (`signal_on_death`); the watchdog covers the rest."""
    if signal_on_death and sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="ctvqa-parent-watch", daemon=True).start()
