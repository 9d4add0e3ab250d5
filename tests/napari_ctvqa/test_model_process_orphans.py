"""A SIGKILLed napari leaves no model process behind (issue 19): a real napari process, started
here, keeps its chat model process answering; the test kills napari with SIGKILL mid-answer and
every process napari had started must be gone within 5 s (the model process ends with its parent:
model.processes.end_with_parent)."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 5.0

# napari with the chat panel's worker, asking again whenever an answer ends, so the model process
# is always in the middle of an answer; it prints the model process's pid at the first piece.
NAPARI = """
import sys
import napari
import numpy as np
from napari_ctvqa.vlm_server import VolumePayload
from napari_ctvqa.vlm_worker import VLMWorker

viewer = napari.Viewer()
worker = VLMWorker("process")
volume = VolumePayload(np.full((16, 48, 48), -600.0, np.float32), (5.0, 1.0, 1.0), {})
state = {"asked": 0, "printed": False}

def ask(*_):
    worker.ask("scan", "Describe every finding in detail.", volume=None if state["asked"] else volume,
               max_new_tokens=256)
    state["asked"] += 1

def piece(_request, _text):
    if not state["printed"]:
        state["printed"] = True
        print("MODEL_PID", worker._handle.pid, flush=True)

worker.loaded.connect(ask)
worker.finished.connect(ask)
worker.piece.connect(piece)
worker.load_failed.connect(lambda message: print("LOAD_FAILED", message, flush=True))
worker.load(sys.argv[1] if len(sys.argv) > 1 else None)
napari.run()
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


def test_sigkilled_napari_leaves_no_model_process(tiny_vlm_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    napari = subprocess.Popen([sys.executable, "-c", NAPARI, str(tiny_vlm_dir)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(napari.stdout, lines), daemon=True).start()
    seen: list[str] = []
    model_pid = None
    try:
        deadline = time.monotonic() + 180
        while model_pid is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                assert napari.poll() is None, "napari exited early:\n" + "".join(seen[-20:])
                continue
            seen.append(line)
            assert not line.startswith("LOAD_FAILED"), line
            if line.startswith("MODEL_PID"):
                model_pid = int(line.split()[1])
        assert model_pid is not None, "no answer started:\n" + "".join(seen[-20:])
        children = [p.pid for p in psutil.Process(napari.pid).children(recursive=True)]
        assert model_pid in children and _alive(model_pid)
        time.sleep(0.3)  # well inside the next answers
        os.kill(napari.pid, signal.SIGKILL)
        napari.wait(10)
        deadline = time.monotonic() + GONE_WITHIN_S
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.1)
        left = [p for p in children if _alive(p)]
        assert not left, f"still running {GONE_WITHIN_S} s after napari was killed: " + ", ".join(
            " ".join(psutil.Process(p).cmdline()[:4]) for p in left)
    finally:
        if napari.poll() is None:
            napari.kill()
        for pid in [model_pid] if model_pid else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# A worker whose model process died while the app still sends it a scan, then an app that quits
# without shutting the worker down: the queue's feeder thread is blocked on a full pipe.
ORPHANED_REQUEST = """
import numpy as np
from qtpy.QtCore import QCoreApplication
from napari_ctvqa.vlm_server import VolumePayload
from napari_ctvqa.vlm_worker import VLMWorker

app = QCoreApplication([])
worker = VLMWorker("process")
worker.start()
worker._handle.kill()
worker._handle.join()
worker.prepare("scan", VolumePayload(np.zeros((64, 128, 128), np.float32), (5.0, 1.0, 1.0), {}))  # 4 MB
print("sent", flush=True)
"""


def test_an_app_quits_although_a_dead_model_process_never_read_its_request() -> None:
    """Python joins a multiprocessing queue's feeder thread at exit; one blocked on a full pipe
    to a dead process (the parent holds the pipe's read end, so no error ends it) held the test
    run at exit after every test had passed."""
    proc = subprocess.run([sys.executable, "-c", ORPHANED_REQUEST], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sent" in proc.stdout
