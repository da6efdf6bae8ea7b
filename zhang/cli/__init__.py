"""The ``zhang`` command: ``train``, ``models``, and the sub-commands of other modules.

Thin on purpose: parse flags, call a library function. Bad input (``UsageError``) prints one
line to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys

from zhang.errors import RunError, UsageError, on_command_line

# Modules that add their own sub-command with ``register(subparsers)``.
_PLUGINS = ("zhang.cli.train", "zhang.cli.models", "zhang.cli.kernel", "zhang.cli.report",
            "zhang.cli.ntk", "zhang.cli.llc", "zhang.cli.measures", "zhang.cli.bound")


class _Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one line (a ``UsageError`` naming the command, and
  the close spelling of a mistyped flag or command), not the usage block."""

  def error(self, message):
    if "required: command" in message:
      message = "no command given: choose one of " + ", ".join(_commands(self))
    raise UsageError(f"{self.prog}: error: {message}{_close_spelling(self, message)}")


def _commands(parser: argparse.ArgumentParser) -> list[str]:
  return [name for a in parser._actions if isinstance(a, argparse._SubParsersAction)
          for name in a.choices]


def _close_spelling(parser: argparse.ArgumentParser, message: str) -> str:
  """``; did you mean --max_steps?`` for the first mistyped flag or command in ``message``."""
  flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
  words = re.findall(r"(?<![\w-])(--?[A-Za-z][\w.-]*)", message)
  choice = re.search(r"invalid choice: '([^']*)'", message)
  wanted, known = (([choice.group(1)], _commands(parser)) if choice and _commands(parser)
                   else (words, flags))
  for word in wanted:
    if word in known:
      continue
    close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
    if close:
      return f"; did you mean {close[0]}?"
  return ""


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="zhang", description="Randomization tests of Zhang et al. (2017) on a grid of "
      "replicas in one jit-compiled JAX program.")
  sub = parser.add_subparsers(dest="command", required=True)

  for name in _PLUGINS:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:  # the plugin exists but a dependency of it is missing: say so
        raise
      continue
    command = module.register(sub)
    # the command's flags, for errors that name a setting (zhang.errors.on_command_line)
    command.set_defaults(flags=[s for a in command._actions for s in a.option_strings])
  return parser


def _config_overrides(argv: list[str]) -> list[str]:
  """``--config.FIELD=VALUE`` and ``--config.FIELD VALUE`` (ml_collections' config_flags
  spelling) as ``--set FIELD=VALUE``, which argparse can take."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config.") and len(arg) > len("--config."):
      field, sep, value = arg[len("--config."):].partition("=")
      if not sep and i + 1 < len(argv):
        i, value, sep = i + 1, argv[i + 1], "="
      out += ["--set", f"{field}{sep}{value}"]
    else:
      out.append(arg)
    i += 1
  return out


def _parse(argv: list[str]) -> argparse.Namespace:
  """The command's arguments; an unknown one is refused by the command's own parser, which
  knows the flags to suggest."""
  parser = build_parser()
  args, extra = parser.parse_known_args(_config_overrides(argv))
  if extra:
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
  return args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args = _parse(argv)
  except UsageError as e:
    print(e, file=sys.stderr)
    return 2
  try:
    return args.func(args)
  except UsageError as e:
    print(f"zhang {args.command}: error: {on_command_line(e, args.flags)}", file=sys.stderr)
    return 2
  except RunError as e:
    print(f"zhang {args.command}: error: {on_command_line(e, args.flags)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
