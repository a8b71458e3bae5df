"""The command line. Only this package parses arguments; library code takes typed keyword arguments.

Each module in this package is one command group and exposes ``register(app)`` plus an ``ORDER`` number that
fixes its place in ``--help``. Modules are discovered (a registry, not an if-chain), so adding a command group
means adding a module. Heavy imports (torch, timm) happen inside the command functions so ``--help`` is instant.

Every mistake a user can make ends the same way: one line ``error: ...`` on stderr and exit status 2, whether
typer rejected the arguments (unknown option, missing argument, wrong type, bad choice), the library raised a
``CxrmtlError``, or the operating system refused a write (full disk, read-only or forbidden folder).
"""

from __future__ import annotations

import errno
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

import typer
from typer.core import TyperGroup

from cxrmtl import __version__
from cxrmtl.errors import CxrmtlError

PROG = "cxrmtl"
USAGE_EXIT = 2  # README: every user mistake exits 2 with one line on stderr
INTERRUPT_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
# OS errors a user causes (where they point --out, how full their disk is) rather than a bug in cxrmtl.
_EDQUOT = getattr(errno, "EDQUOT", -1)  # not defined on every platform
USER_OS_ERRORS: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    _EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
}
_ORDER: dict[str, int] = {}  # command or group name -> its module's ORDER (place in --help)


class OrderedGroup(TyperGroup):
    """Lists commands and command groups together by their module's ``ORDER`` (typer puts all groups last)."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: (_ORDER.get(name, 100), names.index(name)))


app = typer.Typer(
    name=PROG,
    cls=OrderedGroup,
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


def _names(target: typer.Typer) -> set[str]:
    commands = {info.name or info.callback.__name__ for info in target.registered_commands if info.callback}
    return commands | {info.name for info in target.registered_groups if info.name}


def _register_all() -> None:
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        modules.append(importlib.import_module(f"{__name__}.{info.name}"))
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        before = _names(app)
        module.register(app)
        _ORDER.update({name: getattr(module, "ORDER", 100) for name in _names(app) - before})


_register_all()


# ---------------------------------------------------------------------------------------------------------------
# one line per mistake


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of blanks folded to single spaces (an error is one line)."""
    return " ".join(str(text).split())


def _is_click(exc: BaseException, name: str) -> bool:
    """True when ``exc`` derives from click's class ``name`` (ClickException, Exit, Abort), in click itself or in
    typer's vendored copy: typer 0.29 ships click as ``typer._click``, so ``isinstance(exc, click.ClickException)``
    no longer matches (what let every usage error escape as a traceback). Matching by class name along the
    hierarchy recognises either copy, and a future typer that goes back to click."""
    return any(cls.__name__ == name and cls.__module__.split(".")[0] in ("click", "typer") for cls in type(exc).__mro__)


def click_message(exc: BaseException) -> str:
    """One-line text of a click/typer usage error (pydantic's "Value error, " prefix dropped), pointing at the
    command's ``--help`` and, for an unknown command, listing the ones there are."""
    format_message = getattr(exc, "format_message", None)
    text = one_line((format_message() if callable(format_message) else str(exc)).replace("Value error, ", ""))
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return text
    command = ctx.command
    if text.startswith("No such command") and hasattr(command, "list_commands"):
        return f"{text.rstrip('.')}; commands: {', '.join(command.list_commands(ctx))}"
    return f"{text.rstrip('.')} (see {ctx.command_path} --help)"


def os_error_message(exc: OSError) -> str | None:
    """One line naming the file for an OS error a user causes (full disk, no permission, ...); None otherwise."""
    reason = USER_OS_ERRORS.get(exc.errno or 0)
    if reason is None:
        return None
    name = exc.filename if exc.filename is not None else exc.filename2
    where = f"{os.fsdecode(name)}: " if name is not None else ""
    if exc.errno in (errno.ENOSPC, _EDQUOT) and name is not None:
        from cxrmtl.fsio import free_space_note

        reason += free_space_note(os.fsdecode(name))
    return f"{where}{reason}"


def _fail(message: str, code: int = USAGE_EXIT) -> None:
    typer.secho(f"error: {one_line(message)}", fg=typer.colors.RED, err=True)
    sys.exit(code)


def _no_args_help(exc: BaseException) -> None:
    """A group called without its command: typer has printed (or carries) the help; say what is missing."""
    text = str(getattr(exc, "message", "") or "")
    if text.strip():
        typer.echo(text, err=True)
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path} " if ctx is not None else ""
    _fail(f"{where}needs a command (listed above); add --help to any command for its options")


def _handle(exc: BaseException) -> None:
    """Turn ``exc`` into one line and an exit status, or re-raise it (a bug in cxrmtl keeps its traceback)."""
    if isinstance(exc, CxrmtlError):
        _fail(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        typer.secho("interrupted", err=True)
        sys.exit(INTERRUPT_EXIT)
    if _is_click(exc, "Exit"):  # --help and --version end this way
        sys.exit(getattr(exc, "exit_code", 0))
    if _is_click(exc, "Abort"):
        _fail("aborted", 1)
    if _is_click(exc, "ClickException"):
        if type(exc).__name__ == "NoArgsIsHelpError":
            _no_args_help(exc)
        _fail(click_message(exc))
    if isinstance(exc, OSError) and (message := os_error_message(exc)) is not None:
        _fail(message)
    raise exc


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the app; every user mistake is one ``error:`` line on stderr and exit status 2."""
    try:
        code = app(args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        _handle(exc)
        return
    if code == INTERRUPT_EXIT:  # typer turns Ctrl-C inside a command into Exit(130)
        typer.secho("interrupted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)
