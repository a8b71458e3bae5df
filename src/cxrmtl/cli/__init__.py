"""The command line. Only this package parses arguments; library code takes typed keyword arguments.

Each module in this package is one command group and exposes ``register(app)`` plus an ``ORDER`` number that
fixes its place in ``--help``. Modules are discovered (a registry, not an if-chain), so adding a command group
means adding a module. Heavy imports (torch, timm) happen inside the command functions so ``--help`` is instant.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from cxrmtl import __version__
from cxrmtl.errors import CxrmtlError

app = typer.Typer(
    name="cxrmtl",
    help="Multitask deep learning on NIH ChestX-ray14: data, phantom, cache, training, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cxrmtl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """cxrmtl command line."""


def _register_all() -> None:
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        modules.append(module)
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        module.register(app)


_register_all()


def main() -> None:
    """Console entry point: run the app, turning project errors into one clear line and exit status 2."""
    try:
        code = app(standalone_mode=False)
    except CxrmtlError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click's usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
