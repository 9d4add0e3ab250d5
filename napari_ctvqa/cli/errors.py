"""The one place the `ctvqa` command line turns an exception into what a user reads.

Every command runs inside `CLIGroup.invoke`: a failure prints `error: <message>` (the message of
the layer's own error: `CTReadError`, `CheckpointError`, `BadInputError`, `StoreError`, or a plain
ValueError/KeyError/OSError) and exits 1, without a traceback. `ctvqa --debug COMMAND` (or
`CTVQA_DEBUG=1`) lets the exception through with its traceback, for bug reports, also where a
command catches an error and calls `fail(...)` itself. Commands need no try/except of their own.
"""
from __future__ import annotations

import sys

import click
import typer
from typer.core import TyperGroup

from napari_ctvqa.cli._common import debugging, fail, set_debug

# The error vocabulary of each layer: (module, class). Looked up in sys.modules only, so the
# handler never imports torch or SQLAlchemy just to classify an error.
_VOCABULARY: tuple[tuple[str, str], ...] = (
    ("model.ct.volume", "CTReadError"),
    ("model.nets.published", "CheckpointError"),
    ("annotation.importers", "BadInputError"),
    ("annotation.db", "StoreError"),
)
_EXPECTED: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, LookupError)
#: At most this many lines of one message (a list of bad rows is capped where it is made too).
MAX_LINES = 30


def _vocabulary() -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in _VOCABULARY if m in sys.modules)


def user_message(exc: BaseException) -> str:
    """What to print for `exc`: its own words for the errors users cause (bad files, unknown names,
    a locked-down database), its type and first line plus where to get more for anything else."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, MemoryError):
        text = "out of memory (try a smaller --limit, a smaller model or --dtype bfloat16)"
    else:
        text = str(exc).strip()
    lines = [line.rstrip() for line in text.splitlines() if line.strip()] or [type(exc).__name__]
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"... ({len(lines) - MAX_LINES} more lines)"]
    if not isinstance(exc, _vocabulary() + _EXPECTED + (MemoryError,)):
        lines[0] = f"{type(exc).__name__}: {lines[0]} (unexpected; `ctvqa --debug ...` shows the traceback)"
    return "\n".join(lines)


class CLIGroup(TyperGroup):
    """The top-level `ctvqa` group: runs the chosen command and reports its failure in one line."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (typer.Exit, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            typer.secho("interrupted", fg=typer.colors.RED, err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 (the one boundary where every failure becomes a message)
            if debugging():
                raise
            fail(user_message(exc))


def debug_option(
    debug: bool = typer.Option(False, "--debug", envvar="CTVQA_DEBUG",
                               help="Show the full traceback when a command fails."),
) -> None:
    """Global options (before the command: `ctvqa --debug import ...`)."""
    set_debug(debug)
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG)
