"""Bad input: one line naming the problem and the fix, exit 2, nothing written."""

import json
import pathlib
import subprocess
import sys

import pytest

from zhang import cli
from zhang.cli import train as train_cli
from zhang.experiment import config as config_lib

DIGITS = "configs/digits.py"


@pytest.mark.parametrize("args,message", [
    (["--set", "grid=[{'kinds': ['labels'], 'corruptions': [1.5], 'seeds': [0]}]"],
     "corruption level 1.5 is outside [0, 1]"),
    (["--set", "grid=[{'kinds': ['labels'], 'corruptions': [-0.1], 'seeds': [0]}]"],
     "corruption level -0.1 is outside [0, 1]"),
    (["--set", "model=resnet50"], "unknown model 'resnet50'"),
    (["--set", "dataset=svhn"], "unknown dataset 'svhn'"),
    (["--set", "grid=[{'kinds': ['noise'], 'corruptions': [0.0], 'seeds': [0]}]"],
     "unknown randomization kind 'noise'"),
    (["--set", "batch_size=5000"], "batch_size=5000 is larger than the training set"),
    (["--max_steps", "0"], "max_steps=0 must be a positive integer"),
    (["--set", "max_steps=-5"], "max_steps=-5 must be a positive integer"),
    (["--set", "eval_every=0"], "eval_every=0 must be a positive integer"),
    (["--set", "no_such_field=1"], "unknown config field 'no_such_field'"),
    (["--config.no_such_field", "1"], "unknown config field 'no_such_field'"),
    (["--set", "grid=oops"], "cannot set grid to 'oops': it takes a list"),
    (["--config.max_steps=lots"], "cannot set max_steps to 'lots': it takes an integer"),
    (["--config.learning_rate=fast"], "cannot set learning_rate to 'fast': it takes a number"),
    (["--config.compute_dtype=float16"],
     "compute_dtype='float16' must be one of float32, bfloat16"),
    (["--config.learning_rate=0"], "learning_rate=0.0 must be a positive finite number"),
    (["--config.learning_rate=-0.1"], "learning_rate=-0.1 must be a positive finite number"),
    (["--config.learning_rate=inf"], "learning_rate=inf must be a positive finite number"),
    (["--config.learning_rate=nan"], "learning_rate=nan must be a positive finite number"),
    (["--config.grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], "
      "learning_rates=[1e999])]"], "grid learning rate=inf must be a positive finite"),
    (["--config.weight_decay=-1e-4"], "weight_decay=-0.0001 must be a finite number >= 0"),
    (["--config.augmentation=mixup"], "unknown augmentation 'mixup' in 'mixup': choose one of "
     "none, crop, flip, color"),
    (["--config.grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], "
      "learning_rates=[0.01, 0.0])]"], "grid learning rate=0.0 must be a positive finite"),
    (["--config.grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], "
      "learning_rates=[float('nan')])]"], "cannot set grid"),
    (["--config.grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], "
      "weight_decays=[-1.0])]"], "grid weight decay=-1.0 must be a finite number >= 0"),
    (["--config.grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], "
      "augmentations=['crop+cutout'])]"], "unknown augmentation 'cutout' in 'crop+cutout'"),
    (["--config.grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], lr=[0.1])]"],
     "grid entry field(s) lr unknown"),
    (["--data_dir", "/nonexistent/folder", "--set", "dataset='fashion_mnist'"],
     "fashion_mnist"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, message, tmp_path, capsys):
  workdir = tmp_path / "run"
  code = cli.main(["train", "--config", DIGITS, "--workdir", str(workdir), *args])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert message in err
  assert len(err.splitlines()) == 1 and "Traceback" not in err
  assert not workdir.exists()


@pytest.mark.parametrize("seeds", [10_000, 100_000])
def test_a_grid_that_cannot_fit_is_refused_before_compiling(seeds, tmp_path, capsys):
  # mlp_1x512 on digits: 38,410 parameters x 16 bytes (SGD with momentum, w_0) and a 1000-image
  # evaluation's 512-wide layer (4 MB) per replica: 46 GB at 10,000, over the 24 GB here.
  path = tmp_path / "big.py"
  path.write_text("from zhang.experiment import config\n\n\ndef get_config(arg=None):\n"
                  f"  c = config.load({DIGITS!r})\n"
                  f"  c.grid = [dict(kinds=['labels'], corruptions=[0.0], "
                  f"seeds=list(range({seeds})))]\n  return c\n")
  workdir = tmp_path / "run"
  assert cli.main(["train", "--config", str(path), "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  assert f"a grid of {seeds:,} replicas of mlp_1x512 needs at least" in err
  needed = float(err.split("needs at least ")[1].split(" GB")[0])
  assert needed > seeds * 4.5e-3  # GB: at least 4.5 MB a replica, the evaluation's layer
  assert not workdir.exists()


@pytest.mark.parametrize("spec,message", [
    ("configs/digits.py:foo=1", "unknown config argument 'foo': this config takes none"),
    ("configs/digits.py:quick", "unknown config argument 'quick': this config takes none"),
    ("configs/fig1.py:foo=1", "unknown config argument 'foo': known are model, dataset"),
    ("configs/sweep.py:foo=1", "unknown config argument 'foo': known are model, dataset"),
    ("configs/table1.py:foo=1", "unknown config argument 'foo': known are models, dataset"),
    ("configs/modadd.py:foo=1", "unknown config argument 'foo': known are model, modulus"),
    ("configs/measures.py:foo=1", "unknown config argument 'foo': known are dataset, n_train"),
    ("configs/bounds.py:foo=1", "unknown config argument 'foo': known are dataset, n_train"),
    ("configs/lazy_rich.py:foo=1", "unknown config argument 'foo': known are task, widths"),
    ("configs/lazy_rich.py:task=cifar", "config argument task='cifar': use task=modadd, "
                                        "task=digits or task=modadd_scales"),
    ("configs/table2.py:foo=1", "unknown config argument 'foo': known are model, dataset"),
    ("configs/table2.py:seeds=0", "seeds=0: need at least 1"),
])
def test_every_config_refuses_an_argument_it_does_not_know(spec, message, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert cli.main(["train", "--config", spec, "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"zhang train: error: {message}") and len(err.splitlines()) == 1
  assert not workdir.exists()


def test_every_config_file_is_in_the_table_above():
  tested = {"digits", "fig1", "sweep", "table1", "modadd", "measures", "bounds", "lazy_rich",
            "table2"}
  assert {p.stem for p in pathlib.Path("configs").glob("*.py")} == tested


@pytest.mark.parametrize("argv,line", [
    ([], "zhang: error: no command given: choose one of train, models, kernel, report, ntk, "
     "llc, measures, bound"),
    (["trian"], "zhang: error: argument command: invalid choice: 'trian' (choose from 'train', "
     "'models', 'kernel', 'report', 'ntk', 'llc', 'measures', 'bound'); did you mean train?"),
    (["train", "--config", DIGITS, "--workdir", "W", "--max_stesp", "5"],
     "zhang train: error: unrecognized arguments: --max_stesp 5; did you mean --max_steps?"),
    (["train", "--config", DIGITS, "--workdir", "W", "--max_steps", "abc"],
     "zhang train: error: argument --max_steps: invalid int value: 'abc'"),
    (["train", "--workdir", "W"], "zhang train: error: the following arguments are required: "
     "--config"),
    (["report", "R"], "zhang report: error: the following arguments are required: --out"),
    (["report", "R", "--out", "O", "--loss_belwo", "0.1"],
     "zhang report: error: unrecognized arguments: --loss_belwo 0.1; did you mean "
     "--loss_below?"),
    (["llc", "R", "--out", "O", "--chain", "4", "--stepsize=0.1"],
     "zhang llc: error: unrecognized arguments: --stepsize=0.1; did you mean --step_size?"),
    (["kernel", "--dataset", "digits", "--kernal=rbf"],
     "zhang kernel: error: unrecognized arguments: --kernal=rbf; did you mean --kernel?"),
    (["ntk", "R", "--out", "O", "--loss", "hinge"], "zhang ntk: error: argument --loss: "
     "invalid choice: 'hinge' (choose from 'cross_entropy', 'squared')"),
    (["models", "--input_shape", "1", "2"],
     "zhang models: error: argument --input_shape: expected 3 arguments"),
    (["models", "--input_shape", "0", "0", "0"], "zhang models: error: --input_shape 0 0 0 "
     "must be positive integers, e.g. 28 28 3 (height, width, channels)"),
    (["models", "--num_classes", "0"],
     "zhang models: error: --num_classes 0 must be an integer >= 2"),
    (["kernel", "--dataset", "digits", "--memory_gb", "0.5"], "zhang kernel: error: "
     "--memory_gb 0.5 is below the 1.5 GB a solve needs besides its kernel matrices: raise "
     "--memory_gb (default: 80% of MemAvailable)"),
])
def test_parser_errors_are_one_line_naming_the_command(argv, line, tmp_path, capsys,
                                                       monkeypatch):
  monkeypatch.chdir(tmp_path)  # the relative W, R, O: nothing may appear there
  assert cli.main(argv) == 2
  captured = capsys.readouterr()
  assert captured.err.splitlines() == [line] and captured.out == ""
  assert list(tmp_path.iterdir()) == []


def test_bad_config_argument(tmp_path, capsys):
  code = cli.main(["train", "--config", "configs/fig1.py:model=mlp_1x512,colour=red",
                   "--workdir", str(tmp_path / "w")])
  assert code == 2 and "unknown config argument 'colour'" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
  code = cli.main(["train", "--config", "configs/nope.py", "--workdir", str(tmp_path)])
  assert code == 2 and "config file configs/nope.py not found" in capsys.readouterr().err


def test_workdir_with_a_different_config_is_refused_untouched(tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  old = {"format": 1, "model": "mlp_3x512", "dataset": "digits"}
  (workdir / "config.json").write_text(json.dumps(old))
  (workdir / "metrics.jsonl").write_text("{}\n")
  before = {p.name: p.read_bytes() for p in workdir.iterdir()}
  code = cli.main(["train", "--config", DIGITS, "--workdir", str(workdir)])
  err = capsys.readouterr().err
  assert code == 2 and "holds a run with a different config" in err and "--restart" in err
  assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before


def test_config_overrides_are_typed_by_the_field():
  """``--config.FIELD=VALUE`` as ml_collections' config_flags reads it; ``--set`` the same."""
  args = ["--config.max_steps=250", "--config.learning_rate", "0.03", "--config.dataset=digits",
          "--config.weight_decay=5e-4", "--set", "mesh_shape=(1, -1)",
          "--config.grid=[dict(kinds=['labels'], corruptions=[0.0, 1], seeds=[0], "
          "learning_rates=[0.01, 0.1])]"]
  overrides = cli.build_parser().parse_args(
      cli._config_overrides(["train", "--config", DIGITS, "--workdir", "w", *args])).set
  config = config_lib.resolve(config_lib.load(DIGITS, overrides))
  assert (config.max_steps, config.learning_rate, config.weight_decay) == (250, 0.03, 5e-4)
  assert tuple(config.mesh_shape) == (1, -1) and config.dataset == "digits"
  replicas = config_lib.expand_grid(config)
  assert [(r.corruption, r.learning_rate, r.weight_decay) for r in replicas] == [
      (0.0, 0.01, 5e-4), (0.0, 0.1, 5e-4), (1.0, 0.01, 5e-4), (1.0, 0.1, 5e-4)]
  config = config_lib.load(DIGITS, ["learning_rate=None"])
  assert config_lib.resolve(config).learning_rate == 0.01  # the model's (the paper's)


def test_models_table(capsys):
  assert cli.main(["models"]) == 0
  out = capsys.readouterr().out
  assert "inception_small" in out and "1,649,402" in out and "1,209,866" in out


def test_models_table_counts_any_mlp_size(capsys):
  assert cli.main(["models", "mlp_2x1024", "mlp_4x16", "--input_shape", "8", "8", "1"]) == 0
  rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
  # Dense layers' weights and biases: 64 -> 1024 -> 1024 -> 10 and 64 -> 16 x4 -> 10.
  assert rows == {"mlp_2x1024": f"{64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10:,}",
                  "mlp_4x16": f"{64 * 16 + 16 + 3 * (16 * 16 + 16) + 16 * 10 + 10:,}"}
  assert cli.main(["models", "mlp_0x16"]) == 2
  assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_console_entry_point_exit_code(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "zhang", "train", "--config", DIGITS,
                         "--workdir", str(tmp_path / "w"), "--set", "model=vgg"],
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "zhang train: error: unknown model 'vgg': choose one of mlp_1x512, mlp_3x512, "
      "alexnet_small, inception_small, inception_small_nobn, transformer_1l, mlp_tokens, "
      "inception_v3, or "
      "mlp_DxW (an MLP of D hidden layers of width W, e.g. mlp_2x1024) or mlp_tokens_W, either "
      "with a parameterization suffix (e.g. mlp_2x1024_mup)"]


def test_missing_tfds_dataset_is_one_line(tmp_path, capsys):
  code = cli.main(["train", "--config", "configs/fig1.py:model=mlp_1x512", "--workdir",
                   str(tmp_path / "w"), "--data_dir", str(tmp_path)])
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "tfds build cifar10" in lines[0]
  assert not (tmp_path / "w").exists()


def _summary(steps, fit_steps):
  return {"steps_run": steps, "replicas": [{"fit_step": f} for f in fit_steps]}


def test_decay_note_only_when_unfitted_replicas_met_a_decayed_learning_rate():
  config = config_lib.resolve(config_lib.load(DIGITS, ["max_steps=4000", "lr_decay=0.95",
                                                       "lr_decay_every=390"]))
  # 3999 // 390 = 10 decays: 0.95**10 = 60% of the start, nothing to say.
  assert train_cli.decay_note(_summary(4000, [None, 300]), config) is None
  config.max_steps, config.lr_decay_every = 4000, 40  # 99 decays: 0.62% of the start
  note = train_cli.decay_note(_summary(4000, [None, 300, None]), config)
  assert note.startswith("2 replicas did not reach train accuracy 1 in max_steps=4000. "
                         "The learning rate had decayed to 0.62% of its start")
  assert train_cli.decay_note(_summary(4000, [200, 300]), config) is None  # every replica fitted
  assert train_cli.decay_note(_summary(3000, [None]), config) is None  # stopped early (preempted)


@pytest.mark.slow
def test_train_says_when_the_learning_rate_decayed_before_replicas_fitted(tmp_path, capsys):
  code = cli.main(["train", "--config", DIGITS, "--workdir", str(tmp_path / "w"),
                   "--max_steps", "20", "--no_progress", "--set", "eval_every=10",
                   "--set", "lr_decay=0.5", "--set", "lr_decay_every=2"])
  out = capsys.readouterr().out
  assert code == 0
  lines = [s for s in out.splitlines() if "did not reach train accuracy" in s]
  assert len(lines) == 1 and "max_steps=20" in lines[0] and "to 0.2% of its start" in lines[0]
  # Where the time went, from summary.json: every train step but the first call's (one
  # step, which compiles), two timed evaluations (the first compiles).
  timing = json.loads((tmp_path / "w" / "summary.json").read_text())["timing"]
  assert (timing["train_steps"], timing["evaluations"]) == (19, 2)
  [line] = [s for s in out.splitlines() if s.startswith("Time: ")]
  assert f"training {timing['train_ms_per_step']:.3g} ms per step" in line
  assert f"evaluation {timing['eval_seconds_each']:.3g} s each" in line


def test_timing_line_waits_for_timed_calls():
  timing = dict(train_ms_per_step=None, eval_seconds_each=0.5)
  assert train_cli.timing_line({"timing": timing}) is None  # one chunk only: it compiled
  assert train_cli.timing_line({}) is None  # a summary from before timing was recorded


def test_the_sweep_config_is_one_grid_of_every_combination():
  config = config_lib.resolve(config_lib.load("configs/sweep.py:model=mlp_1x512,quick"))
  replicas = config_lib.expand_grid(config)
  coordinates = {(r.corruption, r.learning_rate, r.weight_decay, r.seed) for r in replicas}
  assert len(replicas) == len(coordinates) == 3 * 3 * 2 * 2
  assert {c[:3] for c in coordinates} == {
      (p, lr, wd) for p in (0.0, 0.5, 1.0) for lr in (0.003, 0.01, 0.03) for wd in (0.0, 5e-4)}


def test_library_errors_name_settings_and_the_command_line_names_flags():
  from zhang.errors import UsageError, on_command_line
  e = UsageError("`n_train` 5000 is out of range: lower `n_train` or raise `memory_gb`; "
                 "see `zhang kernel` and the grid key `models`")
  flags = ["--n", "--memory_gb", "--dataset"]
  assert on_command_line(e, flags, n_train="--n") == (
      "--n 5000 is out of range: lower --n or raise --memory_gb; see `zhang kernel` and the "
      "grid key `models`")
  # With no parser at hand every backticked identifier is taken for a flag, commands are not.
  assert on_command_line(e) == ("--n_train 5000 is out of range: lower --n_train or raise "
                                "--memory_gb; see `zhang kernel` and the grid key --models")


def test_a_kernel_setting_error_is_the_flag_on_the_command_line(capsys):
  assert cli.main(["kernel", "--dataset", "digits", "--n", "99999"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("zhang kernel: error: --n 99999 is out of range for digits"), err
