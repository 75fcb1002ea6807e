"""How ``pyromv-train`` and ``pyromv-eval`` report errors.

A *user error* -- a bad option value, an unknown name, a missing file or run directory -- ends in
one line on stderr, ``<prog>: error: <what was wrong and what was expected>``, and exit status 2
(the status ``argparse`` gives a bad command line). Anything else is an *internal error* (a bug):
its traceback is printed and the exit status is 1. ``HYDRA_FULL_ERROR=1`` in the environment, or
``--debug`` anywhere on the command line, prints the complete traceback of every error (the exit
statuses stay the same).

What counts as a user error (:func:`is_user_error`):

* a :class:`UsageError`, raised by the command line's own checks of the options, anywhere in the
  exception's chain;
* an error of Hydra's while it composes the configuration (unknown config group option, an
  override that does not parse or does not match the option's type, an unknown key);
* a missing or unreadable file or folder (``FileNotFoundError``, ``PermissionError`` ...);
* a ``ValueError`` raised by a ``raise`` statement of pyromv's own code: pyromv refuses bad input
  (data, files, options) with one, naming what it expected. The same error raised implicitly
  (``a, b = [1]``) or raised by torch or Pyro during training is an internal error;
* inside an :func:`options` block (where the command line turns options into objects), also a
  ``TypeError``/``KeyError`` from any ``raise`` statement (torch's optimiser refusing a negative
  learning rate is the user's option, not a bug) and an OmegaConf error.

An error of a class pyromv defines for a failure it detects (``NonFiniteLossError``, a diverged
run) is no bug either: it is reported in one line too, with exit status 1.
"""

from __future__ import annotations

import contextvars
import dis
import linecache
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import hydra
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

#: exit status of a user error (as ``argparse``)
EXIT_USAGE = 2
#: exit status of an internal error
EXIT_INTERNAL = 1
#: command-line switch that asks for the complete traceback (removed before Hydra parses the rest)
DEBUG_FLAG = "--debug"
#: environment variable that asks for the complete traceback (Hydra's own switch)
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"

_PYROMV_DIR = Path(__file__).resolve().parents[1]
_HYDRA_DIR = Path(hydra.__file__).resolve().parent
_FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)
_OPTION_REFUSALS = (ValueError, TypeError, KeyError)


class UsageError(ValueError):
    """A bad command line (option value, name, file); reported in one line with exit status 2."""


class _JobError(BaseException):
    """Carries an error of the task function past Hydra's job runner to :func:`run_cli` (as a
    ``BaseException`` Hydra lets it through without printing a line of its own)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


#: whether :func:`run_cli` is running the task (then :func:`job_errors` hands errors over)
_REPORTING: contextvars.ContextVar[bool] = contextvars.ContextVar("pyromv_cli_reporting", default=False)


@contextmanager
def job_errors() -> Iterator[None]:
    """Around the body of a ``@hydra.main`` task: under :func:`run_cli`, an error is handed to it
    untouched (not printed by Hydra); called any other way the block changes nothing."""
    try:
        yield
    except Exception as ex:
        if _REPORTING.get():
            raise _JobError(ex) from None
        raise


def _chain(ex: BaseException) -> Iterator[BaseException]:
    """``ex`` and the exceptions it was raised from or while handling (each once)."""
    seen: set[int] = set()
    todo: list[BaseException] = [ex]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(c for c in (e.__cause__, e.__context__) if c is not None)


def _innermost(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _raised_deliberately(ex: BaseException, within: Path | None = None) -> bool:
    """Whether ``ex`` comes from a ``raise`` statement (in a file under ``within`` if given),
    rather than from an implicit failure such as ``a, b = [1]`` or ``int("x")``."""
    tb = _innermost(ex.__traceback__)
    if tb is None:
        return False
    code = tb.tb_frame.f_code
    if within is not None:
        try:
            Path(code.co_filename).resolve().relative_to(within)
        except ValueError:
            return False
    for instruction in dis.get_instructions(code):
        if instruction.offset == tb.tb_lasti:
            return instruction.opname == "RAISE_VARARGS"
    return linecache.getline(code.co_filename, tb.tb_lineno).lstrip().startswith("raise")


def is_user_error(ex: BaseException) -> bool:
    """Whether ``ex`` is the user's mistake (one line, exit 2) rather than a bug (see the module)."""
    if any(isinstance(e, UsageError) for e in _chain(ex)):
        return True
    if isinstance(ex, (HydraException, *_FILE_ERRORS)):
        return True
    return isinstance(ex, ValueError) and _raised_deliberately(ex, within=_PYROMV_DIR)


def is_reported_failure(ex: BaseException) -> bool:
    """Whether ``ex`` is of an exception class of pyromv's own (a failure pyromv detected and
    explains, such as a diverged training run): one line, exit status 1."""
    return type(ex).__module__.split(".")[0] == "pyromv"


def collapse(text: str) -> str:
    """One line from a message: indented lines (listings) are joined by commas, the others by '; '."""
    out = ""
    listing = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("full_key:", "object_type=", "reference_type=")):
            continue
        if stripped.startswith("Config search path:"):
            break
        indented = line[:1].isspace()
        if not out:
            out = stripped
        elif indented:
            out += (", " if listing else " ") + stripped
        else:
            out += (" " if out.endswith((".", ":", ";", ",", "!", "?")) else "; ") + stripped
        listing = indented
    return out


def _message(ex: BaseException) -> str:
    if isinstance(ex, KeyError) and len(ex.args) == 1 and isinstance(ex.args[0], str):
        return ex.args[0]
    return collapse(str(ex))


def one_line(ex: BaseException) -> str:
    """The message of a user error on one line (without the program's name)."""
    usage = next((e for e in _chain(ex) if isinstance(e, UsageError)), None)
    if usage is not None:
        return _message(usage) or type(usage).__name__
    if isinstance(ex, MissingConfigException) and ex.missing_cfg_file and ex.options:
        group, _, name = ex.missing_cfg_file.rpartition("/")
        if group:
            return f"{group}={name}: no such {group}; choose from {', '.join(ex.options)}"
    if isinstance(ex, OverrideParseException):
        return f"cannot parse the override {ex.override!r}: {collapse(ex.message)}"
    text = _message(ex) or type(ex).__name__
    cause = ex.__cause__
    if isinstance(ex, HydraException) and isinstance(cause, OmegaConfBaseException):
        detail = collapse(str(cause))
        if detail and detail not in text:
            text = f"{text}: {detail}"
    return text


@contextmanager
def options(label: str) -> Iterator[None]:
    """Turn the refusal of a group of options into a :class:`UsageError` that names the group.

    Inside the block, a ``ValueError``/``TypeError``/``KeyError`` from any ``raise`` statement
    (pyromv's own checks, or torch's, e.g. a negative learning rate), an OmegaConf error and a
    missing file are the options' fault: they are re-raised as ``UsageError(f"{label}: {message}")``.
    Anything else passes through unchanged.
    """
    try:
        yield
    except UsageError:
        raise
    except (*_OPTION_REFUSALS, *_FILE_ERRORS, OmegaConfBaseException) as err:
        if isinstance(err, (OmegaConfBaseException, *_FILE_ERRORS)) or _raised_deliberately(err):
            message = _message(err)
            if not message.startswith(f"{label}:"):
                message = f"{label}: {message}"
            raise UsageError(message) from err
        raise


def _trimmed(ex: BaseException) -> list[str]:
    """The traceback of ``ex`` without the leading frames of Hydra and of this wrapper."""
    te = traceback.TracebackException(type(ex), ex, ex.__traceback__)
    frames = list(te.stack)
    ours = (str(_HYDRA_DIR), str(Path(__file__).resolve()))
    start = 0
    while start < len(frames) and str(Path(frames[start].filename).resolve()).startswith(ours):
        start += 1
    if start < len(frames):
        te.stack = traceback.StackSummary.from_list(frames[start:])
    return list(te.format())


def run_cli(prog: str, hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function as the console script ``prog``, reporting errors as above.

    ``--debug`` is taken out of ``sys.argv`` before Hydra parses it. Hydra is asked to re-raise
    (``HYDRA_FULL_ERROR=1`` while it runs) so that its own errors are reported here too.
    """
    argv = list(sys.argv)
    debug = DEBUG_FLAG in argv[1:] or os.environ.get(FULL_ERROR_ENV) == "1"
    previous = os.environ.get(FULL_ERROR_ENV)
    sys.argv = argv[:1] + [a for a in argv[1:] if a != DEBUG_FLAG]
    os.environ[FULL_ERROR_ENV] = "1"
    token = _REPORTING.set(True)
    error: Exception | None = None
    try:
        hydra_main()
    except _JobError as job:  # from the task function
        error = job.error
    except Exception as ex:  # from Hydra: composing the config, parsing the overrides, ...
        error = ex
    finally:
        _REPORTING.reset(token)
        sys.argv = argv
        if previous is None:
            os.environ.pop(FULL_ERROR_ENV, None)
        else:
            os.environ[FULL_ERROR_ENV] = previous
    if error is None:
        return
    if isinstance(error, BrokenPipeError):  # the reader of stdout went away (``pyromv-train --help | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_INTERNAL)
    user = is_user_error(error)
    short = user or is_reported_failure(error)
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__)
    elif not short:
        sys.stderr.write("".join(_trimmed(error)))
        sys.stderr.write(f"{prog}: internal error (a bug in pyromv or in a library it uses); "
                         f"{DEBUG_FLAG} or {FULL_ERROR_ENV}=1 shows the complete traceback\n")
    if short:
        sys.stderr.write(f"{prog}: error: {one_line(error)}\n")
    sys.stderr.flush()
    sys.exit(EXIT_USAGE if user else EXIT_INTERNAL)
