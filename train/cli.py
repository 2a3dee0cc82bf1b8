"""How every entry point ends: a foreseeable error is one line on stderr and exit code 1.

Library code raises (ValueError for bad values, FileNotFoundError for missing inputs, ...);
only entry points turn those into `error: <message>` and a non-zero exit, so a notebook
calling the library sees the exception and a shell user sees one line naming the problem and
the fix, never a traceback. `UNLEASH_DEBUG=1` re-raises instead (the full traceback).

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
      cli.run(main)                   # argparse entry points

    app.run(cli.guarded(main))        # absl entry points
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from typing import Callable

from absl import flags


class Error(Exception):
  """Base for failures the library explains itself (a diverged run, a checkpoint that cannot
  be restored): the message names the problem and what to do."""


# What a user can cause and fix: bad values, missing or unreadable files, absent keys or
# columns, a missing optional dependency, and the library's own explained failures. Anything
# else is a bug and keeps its traceback.
EXPECTED_ERRORS = (Error, ValueError, OSError, KeyError, ImportError, LookupError)


def message(e: BaseException) -> str:
  """The one line printed for `e` (KeyError's repr quoting removed)."""
  text = e.args[0] if isinstance(e, KeyError) and e.args else e
  lines = str(text).strip().splitlines() or [type(e).__name__]
  return " ".join(line.strip() for line in lines)


def _fail(e: BaseException) -> None:
  if os.environ.get("UNLEASH_DEBUG"):
    raise e
  print(f"error: {message(e)}", file=sys.stderr)
  sys.exit(1)


def guarded(main: Callable) -> Callable:
  """`main` with EXPECTED_ERRORS turned into one line and exit code 1."""

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except EXPECTED_ERRORS as e:
      _fail(e)

  return wrapper


@contextlib.contextmanager
def _argparse_errors_raise():
  """argparse reports a bad flag as two lines (usage, then "prog: error: ...") and exit 2;
  inside an entry point it raises instead, so the flag error is one line like every other."""

  def error(parser, message):
    raise ValueError(f"{parser.prog}: {message} (see {parser.prog} --help)")

  previous = argparse.ArgumentParser.error
  argparse.ArgumentParser.error = error
  try:
    yield
  finally:
    argparse.ArgumentParser.error = previous


def run(main: Callable[[], int | None]) -> None:
  """Calls `main()` and exits with its return code (errors, bad flags included, as in
  `guarded`)."""
  with _argparse_errors_raise():
    code = guarded(main)()
  sys.exit(code or 0)


def parse_absl_flags(argv: list[str]) -> list[str]:
  """`flags_parser` for absl's app.run: a bad flag value, or a config file whose get_config
  raises, is one line (the underlying error, not ml_collections' embedded traceback)."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:  # ml_collections: an override of a field the config lacks
    key = str(e).strip("'\"")
    named = [a.split("=")[0] for a in argv if a.startswith("--") and key in a.split("=")[0]]
    _fail(
        ValueError(
            f"{' '.join(named) or key}: no such config field '{key}' (the fields "
            "are documented in configs/base.py)"
        )
    )
  except (flags.Error, *EXPECTED_ERRORS) as e:
    root = e
    if "Traceback" in str(e):  # config_flags re-raises get_config's error with its traceback
      while root.__context__ is not None:
        root = root.__context__
    _fail(root if isinstance(root, EXPECTED_ERRORS) else e)
