"""The documentation cannot rot silently: every command it shows parses, every file it names
exists, and every results page names the committed script that regenerates it.

Commands are collected from README.md, the module docstrings of configs/*.py, every markdown
file under docs/ (code blocks and inline code) and the regeneration scripts of docs/results/
make/, and parsed with the real parser (``zhang.cli.build_parser`` after
``zhang.cli._config_overrides``, as ``zhang.cli.main`` does) without running anything. A
``zhang train`` command's config is loaded and validated with its overrides. Nothing here
compiles or trains: the whole file takes a few seconds.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import io
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from zhang import cli
from zhang.errors import UsageError
from zhang.experiment import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs" / "results").glob("*.md"))
SCRIPTS = sorted((REPO / "docs" / "results" / "make").glob("*.sh"))
DOCS = [REPO / "README.md", *sorted((REPO / "configs").glob("*.py")),
        *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "docs").rglob("*.py")),
        *SCRIPTS]


def _rel(path: pathlib.Path) -> str:
  return str(path.relative_to(REPO))


# --------------------------------------------------------------------------- collecting

@dataclasses.dataclass(frozen=True)
class Snippet:
  """Shell text from a documentation file: a code block's logical line (continuations
  joined) or an inline code span."""
  path: str
  line: int  # 1-based, where the snippet starts
  text: str
  inline: bool = False


def _shell_lines(path: str, lines: list[str], first: int) -> list[Snippet]:
  """Logical lines of shell text (a trailing backslash joins the next line)."""
  out, start, buf = [], None, ""
  for i, line in enumerate(lines):
    if start is None:
      start, buf = first + i, ""
    if line.rstrip().endswith("\\"):
      buf += line.rstrip()[:-1] + " "
      continue
    out.append(Snippet(path, start, buf + line))
    start = None
  if start is not None:
    out.append(Snippet(path, start, buf))
  return out


def _markdown(path: str, text: str) -> list[Snippet]:
  """Fenced code blocks as shell lines; inline code spans (which may wrap a line) outside
  them as inline snippets."""
  out, fence, prose = [], None, []
  for i, line in enumerate(text.splitlines()):
    prose.append("" if fence is not None or line.lstrip().startswith("```") else line)
    if line.lstrip().startswith("```"):
      if fence is not None:  # closing: the block's lines are i - len(fence) + 1 ... i
        out.extend(_shell_lines(path, fence, i - len(fence) + 1))
      fence = [] if fence is None else None
    elif fence is not None:
      fence.append(line)
  joined = "\n".join(prose)
  for m in re.finditer(r"`([^`]+)`", joined):
    if "\n\n" not in m.group(1):
      line = joined.count("\n", 0, m.start()) + 1
      out.append(Snippet(path, line, m.group(1).replace("\n", " "), inline=True))
  return out


def _docstring(path: str, text: str) -> list[Snippet]:
  """The lines of a Python file's module docstring, as shell lines."""
  body = ast.parse(text).body
  if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)):
    return []
  node = body[0]
  lines = text.splitlines()[node.lineno - 1:node.end_lineno]
  return _shell_lines(path, [line.replace('"""', "") for line in lines], node.lineno)


def snippets(path: pathlib.Path) -> list[Snippet]:
  text, name = path.read_text(), _rel(path)
  if path.suffix == ".md":
    return _markdown(name, text)
  if path.suffix == ".py":
    return _docstring(name, text)
  return _shell_lines(name, text.splitlines(), 1)


_SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")"}
_REDIRECT = re.compile(r"^\d*(>>?|<)(&\d+)?$")  # `>`, `2>`, `2>&1`: with or without a target
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # OUT, RUN, WORKDIR, I ...
_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")


def _segments(tokens: list[str]) -> list[list[str]]:
  """Tokens split at shell separators, redirections and their targets dropped."""
  out, current, skip = [], [], False
  for token in tokens:
    if skip:
      skip = False
    elif token in _SEPARATORS:
      out.append(current)
      current = []
    elif token.endswith(";"):  # `done;`
      out.append([*current, token[:-1]])
      current = []
    elif _REDIRECT.match(token):
      skip = "&" not in token  # `> file` has a target; `2>&1` has none
    elif not re.match(r"^\d*(>>?|<)\S", token):  # `>file` is dropped whole
      current.append(token)
  return [*out, current]


def _zhang_argv(segment: list[str]) -> list[str] | None:
  """The arguments after ``zhang`` (``.venv/bin/zhang``, ``python -m zhang``) when the
  segment runs it, placeholders and variables replaced by ``0``; else None."""
  i = 0
  while i < len(segment) and (_ENV.match(segment[i]) or segment[i] in ("time", "exec")):
    i += 1
  head = segment[i:]
  if head and head[0].rsplit("/", 1)[-1] == "zhang":
    argv = head[1:]
  elif head and re.match(r"^python3?$", head[0].rsplit("/", 1)[-1]) and head[1:3] == [
      "-m", "zhang"]:
    argv = head[3:]
  else:
    return None
  return ["0" if _PLACEHOLDER.match(a) else _VARIABLE.sub("0", a) for a in argv]


def commands(snippet: Snippet) -> list[list[str]]:
  """Every zhang command of a snippet, as its argv (without ``zhang``)."""
  if not re.search(r"(^|[\s/;&|(])zhang(\s|$)", snippet.text):
    return []
  try:
    tokens = shlex.split(snippet.text, comments=True)
  except ValueError as e:
    raise UsageError(f"cannot split it as shell words: {e}") from None
  return [argv for seg in _segments(tokens) if (argv := _zhang_argv(seg)) is not None]


# --------------------------------------------------------------------------- checking

class _Stop(Exception):
  """argparse asked to exit: after --help (``status`` 0) or on an error."""

  def __init__(self, status: int, message: str = ""):
    super().__init__(message)
    self.status = status


@functools.cache
def parser():
  """The real parser, strict: no abbreviated flags, errors raised instead of exiting."""
  top = cli.build_parser()
  subs = next(a for a in top._actions if a.choices and hasattr(a, "add_parser")).choices
  for p in (top, *subs.values()):
    p.allow_abbrev = False

    def error(message, _p=p):
      raise _Stop(2, message)

    def leave(status=0, message=None, _p=p):
      raise _Stop(status, message or "")

    p.error, p.exit = error, leave
  return top


def _check_config(args) -> None:
  """A ``zhang train`` command's config file exists and loads and validates with its
  overrides, as ``zhang train`` would before it trains."""
  spec = args.config
  if ".py" not in spec or spec.startswith("gs://"):
    return
  path = spec.split(".py:")[0].removesuffix(".py") + ".py"
  if _PLACEHOLDER.match(pathlib.Path(path).stem):  # configs/NAME.py
    return
  if not (REPO / path).is_file():
    raise UsageError(f"--config names {path}, which is not in the repository")
  config = config_lib.load(str(REPO / spec), args.set or [])
  if args.max_steps is not None:
    config_lib.apply_override(config, f"max_steps={args.max_steps}")
  with _example_modules():
    config_lib.resolve(config)


@contextlib.contextmanager
def _example_modules():
  """docs/examples on the Python path, as the README's commands put it (``PYTHONPATH=``);
  what its modules register is forgotten afterwards."""
  from zhang.experiment import data, models  # pylint: disable=g-import-not-at-top
  saved = (dict(models._MODELS), dict(data._LOADERS), dict(data._INPUTS))  # noqa: SLF001
  modules, path = set(sys.modules), list(sys.path)
  sys.path.insert(0, str(REPO / "docs" / "examples"))
  try:
    yield
  finally:
    sys.path[:] = path
    for name in set(sys.modules) - modules:
      if str(REPO / "docs" / "examples") in str(getattr(sys.modules[name], "__file__", "")):
        del sys.modules[name]
    for registry, copy in zip((models._MODELS, data._LOADERS, data._INPUTS), saved):  # noqa: SLF001
      registry.clear()
      registry.update(copy)


def check(argv: list[str], inline: bool) -> str | None:
  """None if ``zhang ARGV`` parses (and its config loads), else why not. Inline code in
  prose may name a command without its required arguments (`zhang report`)."""
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      args = parser().parse_args(cli._config_overrides(argv))
    if args.command == "train":
      _check_config(args)
  except _Stop as e:
    if e.status == 0 or (inline and str(e).startswith("the following arguments are required")):
      return None
    return str(e)
  except UsageError as e:
    return str(e)
  return None


def problems(snippet_list: list[Snippet]) -> tuple[list[str], int]:
  """The failures, each as ``path:line: `zhang ...`: why``, and how many commands parsed."""
  found, count = [], 0
  for s in snippet_list:
    try:
      argvs = commands(s)
    except UsageError as e:
      found.append(f"{s.path}:{s.line}: `{s.text.strip()}`: {e}")
      continue
    for argv in argvs:
      count += 1
      why = check(argv, s.inline)
      if why:
        found.append(f"{s.path}:{s.line}: `zhang {shlex.join(argv)}`: {why}")
  return found, count


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_every_documented_command_parses(path):
  found, _ = problems(snippets(path))
  assert not found, "\n".join(found)


def test_the_check_finds_commands_and_names_a_misspelt_flag():
  text = ("# Page\n\nRun `zhang report runs/a --out b`, then:\n\n```\n"
          "time zhang kernel --dataset digits \\\n  --num-filters 8 --json > out.json  # 2 s\n"
          "ZHANG_PLAN=replicas=map .venv/bin/zhang train --config configs/digits.py \\\n"
          "  --workdir RUN --config.learning_rate=0.03 2>&1 | tail -3\n"
          "python -m zhang train --config configs/digits.py --workdir w --config.lerning_rate=1\n"
          "zhang train --config configs/nope.py --workdir w\n```\n")
  found, count = problems(_markdown("page.md", text))
  assert count == 5
  assert found[0].startswith("page.md:6: `zhang kernel --dataset digits --num-filters 8 --json`: "
                             "unrecognized arguments: --num-filters")
  assert found[1].startswith("page.md:10: `zhang train --config configs/digits.py --workdir w "
                             "--config.lerning_rate=1`: ") and "lerning_rate" in found[1]
  assert found[2].startswith("page.md:11: ") and "configs/nope.py" in found[2]
  assert len(found) == 3


def test_the_documentation_shows_its_commands():
  """The collector reads what the files hold: a wrong one would find nothing to check."""
  counts = {_rel(p): problems(snippets(p))[1] for p in DOCS}
  assert counts["README.md"] >= 15
  assert all(counts[f"configs/{name}.py"] >= 1 for name in ("digits", "fig1", "modadd"))
  assert all(counts[_rel(page)] >= 1 for page in PAGES)


# --------------------------------------------------------------------------- files named

def _repository_files() -> set[str] | None:
  """Tracked files and new ones not ignored; None outside a git checkout."""
  try:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  files = set(out.splitlines())
  return files | {str(parent) for f in files for parent in pathlib.PurePosixPath(f).parents}


@functools.cache
def in_repository(path: str) -> bool:
  path = path.rstrip("/")
  files = _repository_files()
  if files is None:
    return (REPO / path).exists()
  return path in files and (REPO / path).exists()


_TOP = "zhang|configs|benchmarks|docs|tests|launch|notebooks"
_PATH = re.compile(rf"(?<![\w./~$-])((?:{_TOP})/[\w./*{{}}<>-]*)")
_MODULE = re.compile(r"(?<![\w./~-])zhang(?:\.[A-Za-z_]\w*)+")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _named_paths(text: str) -> list[tuple[int, str]]:
  """(line, path) of every repository path in the text, wildcards and placeholders
  (``configs/NAME.py``, ``docs/results/<page>/``) left out."""
  out = []
  for m in _PATH.finditer(text):
    path = m.group(1).rstrip(".,:;")
    if re.search(r"[*{}<>]", path) or any(
        _PLACEHOLDER.match(part.split(".")[0]) and not in_repository(path)
        for part in path.split("/")):
      continue
    out.append((text.count("\n", 0, m.start()) + 1, path))
  return out


def _top_level_names(file: pathlib.Path) -> set[str]:
  """Names a module defines or imports at its top level (read, not imported)."""
  names = set()
  for node in ast.parse(file.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names |= {t.id for t in targets if isinstance(t, ast.Name)}
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names |= {(a.asname or a.name).split(".")[0] for a in node.names}
  return names


def module_problem(dotted: str) -> str | None:
  """None if ``zhang.a.b.name`` is a module of the package, or a name one defines."""
  parts, here = dotted.split("."), REPO
  for i, part in enumerate(parts):
    if (here / part).is_dir():
      here = here / part
    elif (here / f"{part}.py").is_file():
      here = here / f"{part}.py"
      rest = parts[i + 1:]
      break
    else:
      rest = parts[i:]
      break
  else:
    return None
  module = here if here.suffix == ".py" else here / "__init__.py"
  if i == 1 and not here.suffix:  # only the package itself resolved
    return f"{dotted}: no module {'.'.join(parts[:2])}"
  if rest and module.is_file() and rest[0] not in _top_level_names(module):
    return f"{dotted}: {_rel(module)} defines no {rest[0]}"
  return None


def named_problems(name: str, text: str, folder: pathlib.Path, markdown: bool) -> list[str]:
  """Each path, ``zhang.`` module or relative link (from ``folder``) of a file's text that
  is not in the repository, as ``name:line: what``."""
  found = []
  for line, named in _named_paths(text):
    if not in_repository(named):
      found.append(f"{name}:{line}: {named} is not in the repository")
  for m in _MODULE.finditer(text):
    why = module_problem(m.group(0))
    if why:
      found.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {why}")
  for m in _LINK.finditer(text) if markdown else ():
    target = m.group(1).split("#")[0]
    if target and "://" not in target and not (folder / target).exists():
      found.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: link to {target}, "
                   f"which is not there")
  return found


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_every_file_and_module_the_documentation_names_exists(path):
  found = named_problems(_rel(path), path.read_text(), path.parent, path.suffix == ".md")
  assert not found, "\n".join(found)


def test_the_file_check_names_what_is_missing():
  text = ("See `zhang/probes/llc/sgld.py`, `zhang/cli.py`, benchmarks/RESULTS.md and\n"
          "configs/NAME.py, `zhang.experiment.train.run`, `zhang.ntk_run.Request`,\n"
          "`zhang.analysis.load_runs`, `zhang.analysis.no_such_name`, [a](kernels.md) and\n"
          "[b](kernels/none.png), ~/zhang/x and https://example.com/docs/y.\n")
  found = named_problems("page.md", text, REPO / "docs" / "results", markdown=True)
  assert found == [
      "page.md:1: zhang/cli.py is not in the repository",
      "page.md:2: zhang.ntk_run.Request: no module zhang.ntk_run",
      "page.md:3: zhang.analysis.no_such_name: zhang/analysis/__init__.py defines no "
      "no_such_name",
      "page.md:4: link to kernels/none.png, which is not there"]


# --------------------------------------------------------------------------- results pages

def _block_commands(path: pathlib.Path) -> list[list[str]]:
  return [argv for s in snippets(path) if not s.inline for argv in commands(s)]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_each_results_page_names_the_script_that_runs_its_commands(page):
  script = page.parent / "make" / f"{page.stem}.sh"
  assert f"make/{page.stem}.sh" in page.read_text(), f"{_rel(page)} does not name {_rel(script)}"
  assert script.is_file(), f"{_rel(script)} is missing"
  run = _block_commands(script)
  missing = [shlex.join(argv) for argv in _block_commands(page) if argv not in run]
  assert not missing, f"{_rel(script)} does not run these commands of {_rel(page)}:\n" + (
      "\n".join(f"zhang {m}" for m in missing))
  done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  if (page.parent / page.stem).is_dir():  # the page's figures and files: the script's copies
    assert re.search(rf"^\s*keep(_report)? {page.stem} ", script.read_text(), re.M), (
        f"{_rel(script)} copies nothing into docs/results/{page.stem}/")


def _not_ignored(folders: set[str]) -> set[str]:
  done = subprocess.run(["git", "check-ignore", "--no-index", *sorted(folders)], cwd=REPO,
                        capture_output=True, text=True)
  return folders - set(done.stdout.split())


def test_run_folders_of_the_commands_are_ignored():
  """Every command of the README, the configs, the docs (code blocks and inline code) and the
  scripts writes its runs and reports into git-ignored folders (the scripts copy what a page
  shows into docs/results/ themselves)."""
  written = set()
  for path in DOCS:
    for argv in (argv for s in snippets(path) for argv in commands(s)):
      for flag in ("--workdir", "--out"):
        folder = argv[argv.index(flag) + 1] if flag in argv[:-1] else "0"
        if "://" not in folder and folder != "0":  # "0": a placeholder (OUT, RUN)
          written.add(folder.rstrip("/") + "/")  # folders, made or not
  assert len(written) > 10
  assert not _not_ignored(written), f"not git-ignored: {sorted(_not_ignored(written))}"


def test_a_study_s_closing_hint_works_as_written(tmp_path, monkeypatch, capsys):
  """`zhang train` of a study ends with the `zhang report` command that reads it: it parses,
  and writes into an ignored folder when the study's workdir is one."""
  from zhang.experiment import train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train, "run", lambda *a, **k: dict(
      study=True, models=[], runs={}, replicas=[], wall_seconds=1.0, status="complete"))
  assert cli.main(["train", "--config", "configs/table1.py:quick", "--workdir",
                   "runs/table1_quick"]) == 0
  hint = re.search(r"`(zhang report [^`]*)` reads the study", capsys.readouterr().out)
  assert hint, "no `zhang report` command in the closing line"
  (argv,) = commands(Snippet("stdout", 1, hint.group(1)))
  assert argv[:2] == ["report", "runs/table1_quick"] and check(argv, inline=False) is None
  assert not _not_ignored({argv[argv.index("--out") + 1] + "/"})


# --------------------------------------------------------------------------- help

def _help(command: str) -> str:
  with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
    cli.build_parser().parse_args([command, "--help"])
  return out.getvalue()


def test_every_command_s_help_says_what_it_does_and_each_option():
  for command in ("train", "models", "report"):
    text = _help(command)
    description = text.split("\n\n")[1]
    assert not description.startswith(("positional", "options")), (command, text)
  subs = next(a for a in cli.build_parser()._actions if hasattr(a, "add_parser")).choices
  models = subs["models"]
  assert all(a.help for a in models._actions), [a.dest for a in models._actions if not a.help]


def test_report_help_lists_every_file_it_writes():
  from zhang.analysis import report  # pylint: disable=g-import-not-at-top
  text = _help("report")
  for name in ("report.md", "table1.md", *report.FIGURES, *report.OPTIONAL_FIGURES,
               *report.GROKKING_FIGURES, *report.REGULARIZER_FIGURES):
    assert name in text, name


def test_the_end_of_run_table_explains_its_columns(capsys):
  from zhang.cli import train as train_cli  # pylint: disable=g-import-not-at-top
  replica = dict(replica=0, kind="labels", corruption=0.5, seed=0, label_noise=0.45,
                 fit_step=None, final_train_acc=0.9, final_test_acc=0.5, test_confidence=0.6)
  config = config_lib.resolve(config_lib.load(str(REPO / "configs" / "digits.py")))
  train_cli.print_run(dict(replicas=[replica], steps_run=10, wall_seconds=1.0), config)
  text = capsys.readouterr().out
  header = text.splitlines()[1].split()
  assert "noise" in header and "conf" in header
  assert "noise: the fraction of training labels the corruption changed" in text
  assert "conf: mean max-softmax probability on the test set" in text
