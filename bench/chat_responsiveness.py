"""Does napari stay responsive while the chat panel's model generates? Thread vs process, one run.

micro-sam saw napari stutter when torch ran in a thread of the napari process (GIL and CPU thread
pools shared with the GUI). This benchmark opens napari with a CT-sized volume and the chat panel,
asks a question (the scan is encoded first, untimed), then asks a follow-up while a 10 ms QTimer
scrolls through the slices (every 10th tick by default, as a radiologist paging through) and records the gaps between its ticks.
It does this with the model in a thread and in a spawned process (`VLMWorker(mode)`), and with no
generation at all as the baseline. Target: longest gap < 100 ms. Prints one table.
With `--compare` the reading room is docked too (three linked views that follow every slice
step) and one more mode runs: "Compare with prior" registers a prior (SimpleITK, in a thread)
while the model process answers (issue 20).

    xvfb-run -a .venv/bin/python bench/chat_responsiveness.py [--tokens 120] [--rounds 3] [--scroll-every 10] [--hidden 512 --layers 8] [--compare]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_model(folder: Path, hidden: int, layers: int) -> None:
    """A random LaMed model at the real input size (32x256x256) with a small llama LM."""
    from model.nets.lamed import LamedConfig, LamedForCausalLM
    from model.inference.loading import write_settings
    from tests.model.conftest import build_tokenizer, tiny_text_config
    import torch

    tokenizer = build_tokenizer()
    text = {**tiny_text_config(tokenizer), "hidden_size": hidden, "intermediate_size": hidden * 3,
            "num_hidden_layers": layers, "num_attention_heads": 8, "num_key_value_heads": 8,
            "max_position_embeddings": 1024}
    config = LamedConfig(text_config=text, vision_num_layers=2)
    torch.manual_seed(0)
    LamedForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_settings(folder, prompt_style="m3d", description="random benchmark model")


def wait(app, condition, timeout: float = 300.0) -> None:
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the chat panel did not finish in time")
        app.processEvents()
        time.sleep(0.002)


def open_panel(viewer, model_dir: Path, mode: str, tokens: int, store):
    """A chat panel whose model runs in `mode`, with the scan already encoded (first question)."""
    from qtpy.QtWidgets import QApplication

    from napari_ctvqa.vlm_worker import VLMWorker
    from napari_ctvqa.widgets.chat import ChatWidget

    app = QApplication.instance()
    widget = ChatWidget(viewer, store=store, worker=VLMWorker(mode), model_path=str(model_dir))
    widget.max_new_tokens = tokens
    wait(app, lambda: widget.model_ready or bool(widget.message.text()))
    if not widget.model_ready:
        raise RuntimeError(widget.message.text())
    first = widget.ask("What abnormality is seen in this CT scan?")
    wait(app, lambda: first.state.status in ("done", "failed", "cancelled"))
    return widget


def measure(viewer, layer, widget, label: str, scroll_every: int, room=None) -> dict:
    """Gaps between 10 ms ticks while a follow-up answer streams (widget None: idle for 3 s), and
    while `room` registers its prior (when given), until both are done."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    gaps: list[float] = []
    last = [time.perf_counter()]
    n_slices = layer.data.shape[0]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now
        if scroll_every and len(gaps) % scroll_every == 0:  # page through slices like a reader
            viewer.dims.set_current_step(0, (len(gaps) // scroll_every) % n_slices)

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    start = last[0] = time.perf_counter()
    timer.start()
    if room is not None:  # the click is timed too: the viewer must not stall while the work starts
        room.compare_with_prior()
    view = widget.ask("Describe the findings in the lungs and the mediastinum.") if widget else None
    if view is not None:
        wait(app, lambda: view.state.status in ("done", "failed", "cancelled")
             and (room is None or shown(room)))
        if room is not None:
            # ticks go on a little: a stall while the prior is put on screen ends with the next tick
            settle = time.perf_counter()
            wait(app, lambda: time.perf_counter() - settle > 0.3)
    else:
        wait(app, lambda: time.perf_counter() - start > 3.0)
    timer.stop()
    ms = sorted(1000 * g for g in gaps)
    return {"mode": label, "seconds": time.perf_counter() - start, "ticks": len(ms),
            "max_ms": ms[-1], "p95_ms": ms[int(0.95 * (len(ms) - 1))], "median_ms": statistics.median(ms)}


def shown(room) -> bool:
    """The prior is registered and on screen: both layers in the prior's viewer (a failure raises)."""
    if room.comparison.running:
        return False
    view = room.compare_view
    if view is None or view.comparison is None:
        if "Compare with prior:" in room.message.text():
            raise RuntimeError(f"the prior was not compared: {room.message.text()}")
        return False
    return len(view.model.layers) == 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=120, help="new tokens per answer")
    parser.add_argument("--hidden", type=int, default=512, help="LM hidden size")
    parser.add_argument("--layers", type=int, default=8, help="LM layers")
    parser.add_argument("--scroll-every", type=int, default=10,
                        help="step the slice every N ticks (0: no scrolling, the model's effect alone)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per mode")
    parser.add_argument("--modes", default="thread,process", help="comma-separated: thread, process")
    parser.add_argument("--compare", action="store_true",
                        help="dock the reading room and also measure the process while a prior is registered")
    args = parser.parse_args()

    import napari
    import numpy as np
    from annotation.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args.hidden, args.layers)
        store = Store.create(f"sqlite:///{tmp}/bench.sqlite")
        viewer = napari.Viewer(show=True)
        rng = np.random.default_rng(0)
        volume = rng.normal(-600, 300, size=(64, 256, 256)).astype(np.float32)
        room = reading_room(viewer, volume, Path(tmp), store) if args.compare else None
        layer = viewer.layers["train_1_b_1"] if room else viewer.add_image(volume, name="bench_ct", scale=(5.0, 1.4, 1.4))
        panels = {mode.strip(): open_panel(viewer, model_dir, mode.strip(), args.tokens, store)
                  for mode in args.modes.split(",")}
        rows = []
        for round_ in range(1, args.rounds + 1):  # interleaved, so load bursts hit every mode alike
            rows.append(measure(viewer, layer, None, f"idle #{round_}", args.scroll_every))
            rows += [measure(viewer, layer, panel, f"{mode} #{round_}", args.scroll_every)
                     for mode, panel in panels.items()]
            if room is not None and "process" in panels:
                rows.append(measure(viewer, layer, panels["process"], f"compare #{round_}", args.scroll_every, room))
        if room is not None:
            room.shutdown()
        for panel in panels.values():
            panel.close()
        viewer.close()
        store.close()

    scrolling = f"a slice step every {args.scroll_every} ticks" if args.scroll_every else "no scrolling"
    print(f"\nGUI timer gaps (10 ms timer, {scrolling}) while a {args.hidden}x{args.layers} "
          f"LM answers; target longest gap < 100 ms")
    print(f"{'run':<14}{'time s':>8}{'ticks':>7}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}")
    for r in rows:
        print(f"{r['mode']:<14}{r['seconds']:>8.2f}{r['ticks']:>7}{r['median_ms']:>11.1f}{r['p95_ms']:>9.1f}{r['max_ms']:>9.1f}")
    kinds = ["idle", *(m.strip() for m in args.modes.split(",")), *(["compare"] if args.compare else [])]
    print("\nworst of all rounds (max ms): " + ", ".join(
        f"{kind} {max(r['max_ms'] for r in rows if r['mode'].startswith(kind)):.0f}" for kind in kinds))


def reading_room(viewer, volume, folder: Path, store):
    """The reading room on a scan whose prior (the same scan, shifted 3 slices) is in the store."""
    import numpy as np

    from model.ct.io import write_ct
    from model.ct.volume import CTVolume, canonical_affine
    from napari_ctvqa.widgets.reading import ReadingRoom

    spacing = (5.0, 1.4, 1.4)
    paths = {}
    for name, array in (("train_1_a_1", np.roll(volume, 3, axis=0)), ("train_1_b_1", volume)):
        paths[name] = write_ct(CTVolume(array, spacing, canonical_affine(spacing), {}), folder / f"{name}.nii.gz")
        store.add_scan(f"{name}.nii.gz", str(paths[name]))
    room = ReadingRoom(viewer, store=store)
    viewer.window.add_dock_widget(room, name="Reading room", area="left")
    viewer.add_image(volume, name="train_1_b_1", scale=spacing, metadata={"path": str(paths["train_1_b_1"])})
    return room


if __name__ == "__main__":
    main()
