"""The `--device/--dtype/--quantize` options every model command shares, and loading a model with
them behind one clear error line (an absent GPU, a bad folder).

A command adds `device: DeviceOption = None, dtype: DtypeOption = None, quantize: QuantizeOption = None`
and calls `load_model_or_fail(model, device, dtype, quantize)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from napari_ctvqa.cli._common import fail

if TYPE_CHECKING:
    from model.inference.devices import Runtime

DeviceOption = Annotated[str | None, typer.Option(
    "--device", envvar="CTVQA_DEVICE", show_default="auto",
    help="Where the model runs: auto|cpu|cuda[:N]|mps (auto: the first GPU when there is one, else the CPU).")]
DtypeOption = Annotated[str | None, typer.Option(
    "--dtype", envvar="CTVQA_DTYPE", show_default="auto",
    help="Compute precision: auto|float32|bfloat16|float16 (auto: bfloat16 on a GPU; on a CPU the "
         "checkpoint's bf16 where the CPU has native bf16, else float32).")]
QuantizeOption = Annotated[str | None, typer.Option(
    "--quantize", envvar="CTVQA_QUANTIZE", show_default="none",
    help="none|int8: int8 weights for the language model (about 2.3x faster decoding of a 4B model on a CPU, "
         "slightly different answers; see docs/devices.md).")]


def runtime_or_fail(device: str | None, dtype: str | None, quantize: str | None = None) -> Runtime:
    """The options checked for form and against this machine now, before any slow work."""
    from model.inference.devices import DeviceError, Runtime

    try:
        runtime = Runtime.from_options(device, dtype, quantize)
        runtime.check()
    except DeviceError as exc:
        fail(str(exc))
    return runtime


def load_model_or_fail(model: Path | str | None, device: str | None = None, dtype: str | None = None,
                       quantize: str | None = None) -> Any:
    """`load_vlm` with the shared options; any failure is one line naming the model."""
    runtime = runtime_or_fail(device, dtype, quantize)
    from transformers.utils import logging as hf_logging

    from model.inference.loading import load_vlm

    hf_logging.disable_progress_bar()  # stdout/stderr carry answers and our progress, not weight-loading bars
    try:
        return load_vlm(model, dtype=runtime.dtype, device=runtime.device, quantize=runtime.quantize)
    except (OSError, ValueError, RuntimeError) as exc:
        fail(f"cannot load model {model or '(embedded default)'}: {exc}")
