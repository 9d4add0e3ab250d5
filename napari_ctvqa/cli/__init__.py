"""The `ctvqa` command line. Each area adds its commands from its own module through `register`,
so the CLI and the widgets call the same core functions and no module grows into a monolith.
Heavy imports (torch, napari, SQLAlchemy) happen inside the commands, keeping `--help` instant.
"""
from __future__ import annotations

import typer

from napari_ctvqa.cli import demo, finetune, rate, store, synth, viewer, vlm
from napari_ctvqa.cli.errors import CLIGroup, debug_option

app = typer.Typer(
    name="ctvqa",
    help="3D CT visual question answering: view, ask, rate, curate, export, finetune.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=CLIGroup,  # every failure: one line and exit 1, the traceback only with --debug
)
app.callback()(debug_option)

for _module in (viewer, synth, store, vlm, rate, finetune, demo):
    _module.register(app)


def main() -> None:
    app()
