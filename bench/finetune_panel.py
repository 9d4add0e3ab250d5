"""Does napari stay responsive while the finetune panel trains, and does the panel train as fast as
the CLI? One run each.

The panel runs `ctvqa finetune --progress-json` in a child process; the GUI thread only reads one
JSON line per step. This opens napari with the panel on a small rated store and a tiny random
model, records the gaps between the ticks of a 10 ms QTimer while the panel trains `--steps`
steps, then the same with no run (idle baseline), and times the same run from the CLI.
Targets: longest gap < 100 ms; panel wall time within 1.2x of the CLI's.

    xvfb-run -a .venv/bin/python bench/finetune_panel.py [--steps 60]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def gaps_while(qtbot_wait, run) -> tuple[float, list[float]]:  # noqa: ANN001
    """(wall seconds, timer gaps in ms) while `run(done)` works until it calls done()."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    finished = []
    start = time.perf_counter()
    timer.start()
    run(lambda *_: finished.append(time.perf_counter()))
    qtbot_wait(lambda: bool(finished))
    timer.stop()
    gaps = [1000 * (b - a) for a, b in zip(ticks, ticks[1:])]
    if gaps:
        worst = max(range(len(gaps)), key=gaps.__getitem__)
        print(f"  longest gap {gaps[worst]:.0f} ms at {ticks[worst] - start:.1f} s of {finished[0] - start:.1f} s")
    return finished[0] - start, gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    from model.inference.loading import write_settings
    from napari_ctvqa.widgets.finetune import FinetuneWidget
    from tests.model.conftest import build_tiny_model, build_tokenizer
    from tests.model.test_finetune_store import rated_store

    work = Path(tempfile.mkdtemp(prefix="ctvqa-bench-ft-"))
    model_dir = work / "tiny"
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_settings(model_dir, prompt_style="m3d")
    store, _ = rated_store(work, n_patients=6)

    def wait(condition) -> None:  # noqa: ANN001
        while not condition():
            QApplication.processEvents()
            time.sleep(0.001)

    viewer = napari.Viewer(show=True)
    widget = FinetuneWidget(viewer, store=store)
    viewer.window.add_dock_widget(widget)
    widget.set_base(str(model_dir))
    widget.out_dir.setText(str(work / "panel"))
    widget.max_steps.setValue(args.steps)
    widget.batch_size.setValue(2)
    widget.val_frac.setValue(0.0)

    def run_panel(done) -> None:  # noqa: ANN001
        widget.finished.connect(done)
        widget.failed.connect(done)
        widget.start()

    panel_s, panel_gaps = gaps_while(wait, run_panel)
    idle_end = time.perf_counter() + min(panel_s, 20)
    idle_s, idle_gaps = gaps_while(wait, lambda done: wait(lambda: time.perf_counter() > idle_end) or done())

    cli = [sys.executable, "-m", "napari_ctvqa.cli", *widget.command()]
    cli[cli.index("--out") + 1] = str(work / "cli")
    cli.remove("--progress-json")
    start = time.perf_counter()
    subprocess.run(cli, check=True, capture_output=True)
    cli_s = time.perf_counter() - start

    print(f"{'what':44} {'longest gap':>12} {'p99 gap':>8} {'wall':>8}")
    for name, gaps, wall in (("panel training (ctvqa finetune child process)", panel_gaps, panel_s),
                             ("idle viewer (baseline)", idle_gaps, idle_s)):
        ordered = sorted(gaps)
        print(f"{name:44} {max(gaps):10.0f} ms {ordered[int(0.99 * (len(ordered) - 1))]:5.0f} ms {wall:6.1f} s")
    print(f"{'the same run from the CLI':44} {'':>12} {'':>8} {cli_s:6.1f} s  (panel/CLI {panel_s / cli_s:.2f}x)")
    widget.close()
    viewer.close()


if __name__ == "__main__":
    main()
