"""The `ctvqa` command line. Each area adds its commands from its own module through `register`,
so the CLI and the widgets call the same core functions and no module grows into a monolith.
Heavy imports (torch, napari, SQLAlchemy) happen inside the commands, keeping `--help` instant.
"""
from __future__ import annotations

import typer

from napari_ctvqa.cli import demo, finetune, rate, store, synth, viewer, vlm

app = typer.Typer(
    name="ctvqa",
    help="3D CT visual question answering: view, ask, rate, curate, export, finetune.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in (viewer, synth, store, vlm, rate, finetune, demo):
    _module.register(app)


def main() -> None:
    app()
