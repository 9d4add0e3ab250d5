"""How long a rater waits between pairs: the rating widget with prefetch vs. reading on demand.

Builds a store with N pairs, each on its own real-size CT file (default 64x512x512, gzip NIfTI,
written to a temp dir), then in one run drives the same RatingWidget twice, once with the
background prefetch and once without, and times each "show the next pair" (store queries, text,
scan swap into the reused layer, and the Qt events that repaint) over all pairs. Between pairs it
waits a short "dwell" standing in for the rater's scoring time (real raters take ~60 s; the dwell
only has to exceed one read for prefetch to hide it). Prints p50/p95/max for both and the ratio.
Target: p95 <= 100 ms with prefetch.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/rating.py [--pairs 50] [--shape 64 512 512]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_volumes(folder: Path, pairs: int, shape: tuple[int, int, int]) -> list[Path]:
    """One phantom-like int16-valued volume written once, copied to `pairs` distinct files (each
    file is read separately; copying just saves minutes of gzip compression)."""
    from model.ct.volume import CTVolume, canonical_affine
    from model.ct.io import write_ct

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    body = ((y - shape[1] / 2) / (0.42 * shape[1])) ** 2 + ((x - shape[2] / 2) / (0.46 * shape[2])) ** 2 < 1
    array = np.where(body, 40.0, -1000.0) + rng.normal(0, 25, shape).round()
    array = array.astype(np.float32)
    spacing = (2.5, 0.75, 0.75)
    first = write_ct(CTVolume(array, spacing, canonical_affine(spacing)), folder / "train_0_a_1.nii.gz")
    paths = [first]
    for i in range(1, pairs):
        paths.append(Path(shutil.copy(first, folder / f"train_{i}_a_1.nii.gz")))
    return paths


def build_store(folder: Path, paths: list[Path]):
    from annotation.store import Store

    store = Store.create(f"sqlite:///{folder / 'bench.sqlite'}")
    for i, path in enumerate(paths):
        scan = store.add_scan(path.name, path)
        store.add_qa_pair(scan.id, "image_observation", f"Where is the nodule number {i}?",
                          "In the right upper lobe.", source="template")
    store.assign(["bench"], per_annotator=len(paths), overlap=0, seed=0)
    return store


def _idle(app, seconds: float) -> None:
    """Let Qt run (the rater scoring, the prefetch reading) without measuring anything."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def time_session(viewer, store, prefetch: bool, dwell: float) -> tuple[list[float], list[float]]:
    """Per move to the next pair: seconds in the widget (queries, text, layer swap) and seconds
    until napari has processed the repaint that follows."""
    from qtpy.QtWidgets import QApplication

    from napari_ctvqa.widgets.rating import RatingWidget

    app = QApplication.instance()
    widget = RatingWidget(viewer, store=store, annotator="bench", prefetch=prefetch)
    viewer.window.add_dock_widget(widget, name="Rate QA pairs", area="right")
    prepare, repaint = [], []
    try:
        for _ in range(len(widget.items) - 1):
            _idle(app, dwell)
            start = time.perf_counter()
            widget.go_forward()
            middle = time.perf_counter()
            app.processEvents()
            prepare.append(middle - start)
            repaint.append(time.perf_counter() - middle)
    finally:
        viewer.window.remove_dock_widget(widget)
        widget.close()
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    return prepare, repaint


def time_slice_steps(viewer, path: Path, steps: int) -> list[float]:
    """napari's own floor on this machine: repaint after stepping one slice of a CT, no widget."""
    from qtpy.QtWidgets import QApplication

    from model.ct.io import read_ct

    app = QApplication.instance()
    volume = read_ct(path)
    viewer.add_image(volume.array, scale=volume.spacing, contrast_limits=(-1000, 1000))
    times = []
    for i in range(steps):
        _idle(app, 0.1)
        start = time.perf_counter()
        viewer.dims.set_current_step(0, 5 + i % (volume.array.shape[0] - 10))
        app.processEvents()
        times.append(time.perf_counter() - start)
    viewer.layers.clear()
    return times


def summary(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "max": float(ms.max()),
            "mean": statistics.fmean(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--dwell", type=float, default=None,
                        help="seconds between pairs (default: 1.5x one measured read, at least 0.3)")
    args = parser.parse_args()

    import napari

    from model.ct.io import read_ct

    with tempfile.TemporaryDirectory(prefix="ctvqa-bench-rating-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        paths = make_volumes(folder, args.pairs, tuple(args.shape))
        store = build_store(folder, paths)
        print(f"setup: {args.pairs} pairs on {args.pairs} files of {tuple(args.shape)} "
              f"({paths[0].stat().st_size / 1e6:.1f} MB gz each) in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        read_ct(paths[0])
        read_s = time.perf_counter() - t0
        dwell = args.dwell if args.dwell is not None else max(0.3, 1.5 * read_s)
        print(f"one read_ct: {read_s * 1000:.0f} ms; dwell between pairs: {dwell:.2f} s")
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 950)
        rows = {"napari slice step (floor)": summary(time_slice_steps(viewer, paths[0], 20))}
        for prefetch, label in ((True, "with prefetch"), (False, "without prefetch")):
            prepare, repaint = time_session(viewer, store, prefetch, dwell)
            rows[f"{label}: total"] = summary([a + b for a, b in zip(prepare, repaint)])
            rows[f"{label}: widget"] = summary(prepare)
            rows[f"{label}: repaint"] = summary(repaint)
        viewer.close()
        store.close()

    print(f"\ntime to show the next pair over {args.pairs - 1} moves (ms); 'widget' = queries, text and "
          "layer swap, 'repaint' = the Qt/OpenGL redraw that follows:")
    print(f"{'':>32} {'p50':>8} {'p95':>8} {'max':>8} {'mean':>8}")
    for label, r in rows.items():
        print(f"{label:>32} {r['p50']:8.1f} {r['p95']:8.1f} {r['max']:8.1f} {r['mean']:8.1f}")
    with_p95 = rows["with prefetch: total"]["p95"]
    ratio = rows["without prefetch: total"]["p95"] / with_p95
    verdict = "meets" if with_p95 <= 100 else "MISSES"
    print(f"p95 speed-up from prefetch: {ratio:.1f}x; with prefetch p95 {with_p95:.1f} ms {verdict} the 100 ms "
          f"target (napari's own slice-step repaint p95 here: {rows['napari slice step (floor)']['p95']:.1f} ms)")


if __name__ == "__main__":
    main()
