"""How every entry point ends: a foreseeable error is one line on stderr and exit code 1.

Library code raises (ValueError for bad values, FileNotFoundError for missing inputs, ...);
only entry points turn those into `error: <message>` and a non-zero exit, so a notebook
calling the library sees the exception and a shell user sees one line naming the problem and
the fix, never a traceback. `UNLEASH_DEBUG=1` re-raises instead (the full traceback).

    def main(argv=None) -> int:
      args = cli.parse_args(parser, argv)   # with cli.add_config(parser): --config FILE[:ARG]
      ...                                   # and --config.a.b=V overrides, typed
    if __name__ == "__main__":
      cli.run(main)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from typing import Callable, Sequence

from absl import flags
from ml_collections import config_flags


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


CONFIG_HELP = (
    "config file FILE[:ARG] (e.g. configs/gpt2.py:size=124M); override a field with "
    "--config.a.b=V or --config.a.b V (parsed as the field's type)"
)


def add_config(parser: argparse.ArgumentParser, *, lock_config: bool = True) -> None:
  """`--config FILE[:ARG]` on `parser`; `parse_args` loads it (ml_collections config_flags)
  and applies the `--config.a.b=V` overrides. `lock_config`: the config comes back locked
  (the program can change fields but not add new ones)."""
  parser.add_argument("--config", required=True, metavar="FILE[:ARG]", help=CONFIG_HELP)
  parser.set_defaults(lock_config=lock_config)


def flag_names(name: str) -> list[str]:
  """Both spellings of a multi-word flag: --num-slices and --num_slices."""
  return list(dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"]))


def _truth(value: str) -> bool:
  if value.lower() in ("true", "t", "1", "yes"):
    return True
  if value.lower() in ("false", "f", "0", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_bool(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
  """A boolean flag spelled --name, --name=true|false or --noname (absl's spellings)."""
  dest = name.replace("-", "_")
  parser.add_argument(
      *flag_names(name),
      dest=dest,
      nargs="?",
      const=True,
      default=default,
      type=_truth,
      metavar="true|false",
      help=help,
  )
  parser.add_argument(
      *[f"--no{n[2:]}" for n in flag_names(name)],
      dest=dest,
      action="store_false",
      help=argparse.SUPPRESS,
  )


def load_config(spec: str, overrides: Sequence[str] = (), *, lock_config: bool = True):
  """The ConfigDict of `spec` (FILE[:ARG]) with `overrides` (["--config.a.b=V", ...] or
  ["--config.a.b", "V"]) applied by ml_collections' config_flags, which parses each value as
  its field's type (int stays int, a float field takes 1, tuples, None where allowed).
  One-line errors: FileNotFoundError for a missing file; ValueError for an unknown field, a
  bad value or a stray argument; a config file's own exception when its get_config raises."""
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path}: no such config file")
  argv = ["config", f"--config={spec}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, CONFIG_HELP, lock_config=lock_config, flag_values=flag_values, sys_argv=argv
  )
  try:
    rest = flag_values(argv)
  except AttributeError as e:  # ml_collections: an override of a field the config lacks
    key = str(e).strip("'\"")
    named = [a.split("=")[0] for a in overrides if a.startswith("--") and key in a.split("=")[0]]
    raise ValueError(
        f"{' '.join(named) or key}: no such config field '{key}' (the fields "
        "are documented in configs/base.py)"
    ) from None
  except (flags.Error, *EXPECTED_ERRORS) as e:
    root = e
    if "Traceback" in str(e):  # config_flags re-raises get_config's error with its traceback
      while root.__context__ is not None:
        root = root.__context__
    if isinstance(root, EXPECTED_ERRORS):
      raise root from None
    raise ValueError(message(e)) from None
  if len(rest) > 1:
    raise ValueError(f"unexpected arguments {rest[1:]}; every option is a --flag")
  config = flag_values["config"].value
  config.keys()  # config_flags defers other load failures to the first use: raise them here
  return config


def _is_override(arg: str) -> bool:
  return arg.startswith(("--config.", "--noconfig."))


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
  """`parser.parse_args(argv)` for a parser with `add_config`: args.config is the loaded
  ConfigDict, with every --config.a.b override applied (args.config_spec: the FILE[:ARG]
  given); any other unknown flag is an error."""
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if a.startswith("-") and not _is_override(a) and not _number(a)]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  args.config_spec = args.config
  args.config = load_config(args.config, rest, lock_config=args.lock_config)
  return args


def _number(arg: str) -> bool:
  """A negative number is a value (--config.a.b -1), not a flag."""
  try:
    float(arg)
  except ValueError:
    return False
  return True
