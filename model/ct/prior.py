"""A patient's prior scan read, rigidly registered and resampled into the current scan's grid,
in a process of its own.

Why a process: SimpleITK's registration holds the interpreter lock for long stretches, so in a
thread of the viewer's process it froze the viewer for a quarter of a second at a time while
the radiologist scrolled (issue 20). A spawned process shares nothing with the viewer but a
queue: progress, then the result or a one-line failure. This module imports no Qt, so the
spawned process starts with numpy and SimpleITK only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from model.ct.io import read_ct
from model.ct.registration import (
    RegistrationError,
    difference,
    register_rigid,
    resample_onto,
)
from model.ct.volume import CTReadError, CTVolume
from model.processes import end_with_parent, from_shared, to_shared, yield_to_viewer


@dataclass(frozen=True)
class Comparison:
    """A registered prior in the current scan's grid, and how it was registered."""

    name: str
    prior: CTVolume
    difference: np.ndarray
    description: str


def compare(current: CTVolume, prior_path: str, name: str, progress: Any = None, should_stop: Any = None) -> Comparison:
    """Read, register and resample one prior."""
    prior = read_ct(prior_path)
    result = register_rigid(current, prior, progress=progress, should_stop=should_stop)
    aligned = resample_onto(prior, current, result)
    return Comparison(name, aligned, difference(current, aligned), result.describe())


_EMPTY = np.zeros(0, np.float32)


def send_volume(volume: CTVolume) -> tuple[CTVolume, str, list]:
    """A volume to hand to another process: its voxels in shared memory, the rest pickled (see
    `model.processes.to_shared` for why); `receive_volume` there takes it back."""
    return (replace(volume, array=_EMPTY), *to_shared([volume.array]))


def receive_volume(message: tuple[CTVolume, str, list]) -> CTVolume:
    shell, name, specs = message
    return replace(shell, array=from_shared(name, specs)[0])


def send_comparison(comparison: Comparison) -> tuple[Comparison, str, list]:
    """A Comparison for the viewer: its two arrays in shared memory (`receive_comparison` there)."""
    shell = replace(comparison, prior=replace(comparison.prior, array=_EMPTY), difference=_EMPTY)
    return (shell, *to_shared([comparison.prior.array, comparison.difference]))


def receive_comparison(message: tuple[Comparison, str, list]) -> Comparison:
    shell, name, specs = message
    prior, diff = from_shared(name, specs)
    return replace(shell, prior=replace(shell.prior, array=prior), difference=diff)


def compare_in_process(inbox: Any, prior_path: str, name: str, queue: Any, stop: Any,
                       parent_pid: int, signal_on_death: bool) -> None:
    """The spawned process's work: the current scan from `inbox` (`send_volume`), then
    ("progress", fraction)..., then ("done", `send_comparison(...)`) or ("failed", message) on
    `queue`; `stop` (an Event) cancels at the next iteration. It ends with the viewer
    (`model.processes.end_with_parent`; `signal_on_death` only when started from the viewer's main
    thread)."""
    end_with_parent(parent_pid, signal_on_death)
    import SimpleITK as sitk  # deferred: only the spawned process registers

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(yield_to_viewer())
    current = receive_volume(inbox.get())
    try:
        comparison = compare(current, prior_path, name, lambda f: queue.put(("progress", float(f))), stop.is_set)
    except (RegistrationError, CTReadError) as exc:
        queue.put(("failed", str(exc)))
    except Exception as exc:  # noqa: BLE001 - a panel message, never a traceback
        queue.put(("failed", f"the prior could not be compared: {exc}"))
    else:
        queue.put(("done", send_comparison(comparison)))
