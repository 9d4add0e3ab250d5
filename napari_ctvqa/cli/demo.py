"""`ctvqa demo`: the whole product in one command (synthetic cohort, database, chat, rating)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from napari_ctvqa.cli._common import fail, progress_bar
from napari_ctvqa.cli._runtime import DeviceOption, DtypeOption, QuantizeOption, runtime_or_fail

if TYPE_CHECKING:
    from model.inference.devices import Runtime
    from napari_ctvqa.demo import DemoWindow
    from napari_ctvqa.demo_setup import DemoSetup


def register(app: typer.Typer) -> None:
    """Add `ctvqa demo` to the `ctvqa` app."""
    app.command("demo")(demo)


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Folder for the demo's cohort and database (built on the first run, reused later).")] = Path("ctvqa-demo"),
    screenshot: Annotated[Path | None, typer.Option("--screenshot", help="Ask the pre-filled question, save the whole window to this PNG once the answer is complete, and exit (headless checks).")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Model folder (ours or a published M3D-LaMed); default: $CTVQA_MODEL, else the embedded model.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="With --screenshot: seconds to wait for the model to load and answer.")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="With --screenshot: print the timings and the answer as JSON.")] = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    quantize: QuantizeOption = None,
) -> None:
    """Open napari on a synthetic chest CT with the chat panel (a question pre-filled) and a
    rating queue. The first run builds a small cohort and its database in --workdir (about a
    minute); later runs reuse them and open in seconds."""
    from napari_ctvqa.demo_setup import existing_setup, prepare_demo

    start = time.perf_counter()
    model_path = str(model) if model is not None else os.environ.get("CTVQA_MODEL") or None
    if model_path is not None and not Path(model_path).is_dir():
        fail(f"model folder {model_path} does not exist (from {'--model' if model else 'CTVQA_MODEL'})")
    runtime = runtime_or_fail(device, dtype, quantize)
    if workdir.exists() and not workdir.is_dir():
        fail(f"--workdir {workdir} exists and is not a folder")
    setup = existing_setup(workdir)
    built = setup is None
    if built:
        typer.echo(f"First run: building the demo cohort and database in {workdir} (later runs reuse it).", err=True)
        try:
            with progress_bar("preparing the demo") as update:
                setup = prepare_demo(workdir, progress=lambda _stage, done, total: update(done, total))
        except (ValueError, OSError, RuntimeError) as exc:
            fail(f"could not prepare the demo in {workdir}: {exc}")
    prepared = time.perf_counter() - start
    typer.echo(f"{'built' if built else 'reused'} {setup.workdir} in {prepared:.1f} s; "
               f"opening {setup.volume_name} ({setup.finding.lower()})", err=True)
    if screenshot is None:
        _interactive(setup, model_path, start, runtime)
    else:
        _screenshot(setup, model_path, screenshot, timeout, start, prepared, built, as_json, runtime)


def _open(setup: DemoSetup, model_path: str | None, runtime: Runtime) -> DemoWindow:
    """The demo window, or one clear line when its scan or database cannot be opened."""
    from model.ct.volume import CTReadError

    from napari_ctvqa.demo import open_demo

    try:
        return open_demo(setup, model_path, runtime=runtime)
    except (CTReadError, OSError, ValueError, RuntimeError) as exc:
        fail(f"could not open the demo in {setup.workdir}: {exc} (delete the folder to rebuild it)")


def _interactive(setup: DemoSetup, model_path: str | None, start: float, runtime: Runtime) -> None:
    import napari

    from napari_ctvqa.demo import fit_window

    window = _open(setup, model_path, runtime)
    fit_window(window)
    typer.echo(f"ctvqa demo: window open after {time.perf_counter() - start:.1f} s in total; the model "
               "loads in the chat panel, press Ask there (Ctrl+Enter).", err=True)
    napari.run()
    window.close()


def _screenshot(setup: DemoSetup, model_path: str | None, path: Path, timeout: float, start: float,
                prepared: float, built: bool, as_json: bool, runtime: Runtime) -> None:
    from napari_ctvqa.demo import DemoError, answer_prefilled, fit_window, save_screenshot, wait_for_model

    window = _open(setup, model_path, runtime)
    try:
        fit_window(window)
        opened = time.perf_counter() - start
        deadline = time.perf_counter() + timeout
        wait_for_model(window, timeout)
        loaded = time.perf_counter() - start
        answer = answer_prefilled(window, max(1.0, deadline - time.perf_counter()))
        answered = time.perf_counter() - start
        save_screenshot(window, path)
    except (DemoError, OSError) as exc:  # OSError: the PNG could not be written
        fail(f"ctvqa demo: {exc}")
    finally:
        window.close()
    total = time.perf_counter() - start
    figures = {"screenshot": str(path), "workdir": setup.workdir, "built": built, "volume_name": setup.volume_name,
               "question": setup.question, "answer": answer.text, "choice": answer.choice,
               "model": window.chat.model_name, "runtime": window.chat.models.runtime, "seconds": {
                   "prepare": round(prepared, 1), "window": round(opened, 1), "model_loaded": round(loaded, 1),
                   "answered": round(answered, 1), "total": round(total, 1)}}
    if as_json:
        typer.echo(json.dumps(figures))
        return
    chosen = f" (chosen: {answer.choice_text()})" if answer.choice else ""
    typer.echo(f"Q: {setup.question}\nA: {answer.text.strip() or '(no text)'}{chosen}")
    typer.echo(f"saved {path}; total {total:.1f} s (prepare {prepared:.1f} s, window {opened:.1f} s, "
               f"model loaded {loaded:.1f} s, answered {answered:.1f} s)")
