"""Config files that fail to load, and bad field values: one UsageError line each."""

import re

import pytest

from zhang import cli
from zhang.errors import UsageError
from zhang.experiment import config as config_lib

DIGITS = "configs/digits.py"

# (file text, the line number the message names, what it says about the error)
BAD_FILES = {
    "syntax": ("def get_config(arg=None)\n  return 1\n", 1, "SyntaxError: expected ':'"),
    "raises": ("from zhang.experiment.config import base_config\n\n\ndef get_config(arg=None):\n"
               "  c = base_config()\n  raise KeyError('x')\n", 6, "KeyError: 'x'"),
    "module_raises": ("import os\n\nLIMIT = int(os.environ['ZHANG_NO_SUCH_VARIABLE'])\n", 3,
                      "KeyError: 'ZHANG_NO_SUCH_VARIABLE'"),
    "helper_raises": ("def helper():\n  return 1 / 0\n\n\ndef get_config(arg=None):\n"
                      "  return helper()\n", 2, "ZeroDivisionError: division by zero"),
    "not_a_config_dict": ("def get_config(arg=None):\n  return {'model': 'mlp_1x512'}\n", 1,
                          "get_config returned dict, not an ml_collections.ConfigDict"),
    "takes_no_arg": ("def get_config():\n  return None\n", 1, "TypeError: get_config()"),
}


def _error(spec, overrides=()):
  with pytest.raises(UsageError) as info:
    config_lib.resolve(config_lib.load(spec, list(overrides)))
  return str(info.value)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_config_file_that_fails_to_load_is_one_line_naming_file_and_line(name, tmp_path):
  text, line, error = BAD_FILES[name]
  path = tmp_path / f"{name}.py"
  path.write_text(text)
  message = _error(str(path))
  assert message.startswith(f"config file {path} line {line}: ")
  assert error in message
  assert len(message.splitlines()) == 1


def test_usage_error_of_a_config_argument_is_kept(tmp_path):
  path = tmp_path / "args.py"
  path.write_text("from zhang.experiment import config\n\n\ndef get_config(arg=None):\n"
                  "  config.parse_arg(arg, model='mlp_1x512')\n  return config.base_config()\n")
  assert _error(f"{path}:colour=red").startswith("unknown config argument 'colour'")


def test_cli_bad_config_file_exits_2_with_one_line(tmp_path, capsys):
  path = tmp_path / "bad.py"
  path.write_text("def get_config(arg=None)\n  return 1\n")
  workdir = tmp_path / "w"
  code = cli.main(["train", "--config", str(path), "--workdir", str(workdir)])
  err = capsys.readouterr().err
  assert code == 2
  assert err.splitlines() == [
      f"zhang train: error: config file {path} line 1: SyntaxError: expected ':'; "
      f"fix the file"]
  assert not workdir.exists()


def _check_example(message, field):
  """The message names the field and ends with its example, and the example is valid (a
  dropout rate for a model with dropout)."""
  assert message.startswith((f"{field}=", f"cannot set {field} to "))
  found = re.findall(r"e\.g\. --config\.(\w+)=(\S+)$", message)
  assert found and found[0][0] == field, message
  assert "grid" not in message
  model = ["model=inception_v3"] if field == "dropout" else []
  config_lib.resolve(config_lib.load(DIGITS, [f"{field}={found[0][1]}", *model]))


@pytest.mark.parametrize("field,value", [
    ("learning_rate", "nan"), ("learning_rate", "-0.1"), ("learning_rate", "abc"),
    ("max_steps", "abc"), ("max_steps", "1.5"), ("max_steps", "-5"), ("max_steps", "inf"),
    ("momentum", "inf"), ("lr_decay", "0"), ("fit_threshold", "nan"),
    ("weight_decay", "-1e-4"), ("n_train", "-1"), ("batch_size", "0"),
    ("eval_every", "1e3")])
def test_bad_value_message_has_the_fields_own_example(field, value):
  _check_example(_error(DIGITS, [f"{field}={value}"]), field)


_BASE = config_lib.base_config()
NUMERIC_FIELDS = [key for key in _BASE.keys()
                  if config_lib._field_type(_BASE, key) in (int, float)]


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_every_numeric_field_says_how_to_set_it(field):
  assert len(NUMERIC_FIELDS) >= 10
  for value in ("nan", "inf", "-inf", "many", "1.5", "-1", "1e999"):
    try:
      config_lib.resolve(config_lib.load(DIGITS, [f"{field}={value}"]))
    except UsageError as e:
      _check_example(str(e), field)
    else:  # a valid value for this field (1.5 is a fine learning rate)
      assert value in ("1.5",) and field in ("learning_rate", "weight_decay",
                                             "output_scale"), value


def test_grid_values_point_at_the_grid_entry():
  message = _error(DIGITS, ["grid=[dict(kinds=['labels'], corruptions=[0.0], seeds=[0], "
                            "learning_rates=[0.0])]"])
  assert message.startswith("grid learning rate=0.0 must be a positive finite number")
  assert "learning_rates=[0.01]" in message and "--config.learning_rate" not in message
