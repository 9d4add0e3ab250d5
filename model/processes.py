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

PARENT_POLL_S = 0.5
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: Scheduling priority of the viewer's worker processes: lower than napari's, so the GUI wins the CPU.
PROCESS_NICENESS = 10


def yield_to_viewer() -> int:
    """Lower this worker's priority and return the threads it should use (one core left to the
    viewer). Why: the viewer redraws on the GUI thread; a worker at the same priority using every
    core (torch's pool, SimpleITK's registration threads) starves it, and the radiologist sees the
    canvas stall (bench/chat_responsiveness.py)."""
    with contextlib.suppress(OSError, AttributeError):  # no nice() on some platforms: run as is
        os.nice(PROCESS_NICENESS)
    return max(1, (os.cpu_count() or 2) - 1)


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
