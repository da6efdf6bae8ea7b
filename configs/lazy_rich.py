r"""Lazy or rich: the same networks trained lazier or richer, side by side.

  zhang train --config configs/lazy_rich.py --workdir runs/lr_modadd      # modadd: width x parameterization
  zhang train --config configs/lazy_rich.py:task=digits --workdir runs/lr_digits   # randomization test x output scale
  zhang train --config configs/lazy_rich.py:task=modadd_scales --workdir runs/lr_modadd_scales  # grokking x output scale
  zhang ntk runs/lr_modadd/mlp_tokens_1024_mup --steps all --out report   # how far each kernel moved
  zhang report runs/lr_modadd --out report                                 # accuracy and kernel movement
  zhang train --config configs/lazy_rich.py:quick --workdir runs/lr_quick  # a smoke test

task=modadd (default): a study over the token MLP's width {64, 256, 1024, 4096} x
parameterization {standard, ntk, mup} (models mlp_tokens_W[_PRESET]; each is one compiled
program, run one after another into WORKDIR/MODEL), each over true labels and 30% corrupted
ones x 2 seeds, full-batch AdamW as configs/modadd.py (lr 0.01, weight decay 1.0, modulus 59,
half the pairs train), 2,000 steps: well past the fit, so the generalize step and the final
test accuracy per cell can be read beside the kernel baseline (`zhang kernel RUN`). Every
preset is standard at the base width 512 (zhang/experiment/parameterization.py).

task=digits: the randomization test (true and random labels, 2 seeds) of MLP 1x512 on digits
at output scales {1, 10, 100}: each replica trains alpha (f(w) - f(w_0)) at lr 0.01 / alpha^2
(SGD with momentum, the paper's schedule), to the fit. Does the time to fit, and random
labels' slowdown, approach the kernel regime's as alpha grows?

Arguments (comma-separated after the colon):
  task=NAME     modadd (default), digits, or modadd_scales: mlp_tokens (width 512) at the
                output scales, true and 30% corrupted labels x 2 seeds, 2,000 steps
                (Kumar et al.'s lazy-to-rich account of grokking).
  widths=L      modadd's widths joined by +, e.g. 64+256 (default 64+256+1024+4096).
  presets=L     modadd's parameterizations joined by + (default standard+ntk+mup).
  scales=L      the output scales of digits and modadd_scales, joined by + (default
                1+10+100).
  max_steps=N   modadd's steps (default 2000).
  quick         modadd at widths 64 and 256, standard and mup, true labels, 300 steps at
                modulus 23: a smoke test (4 models, 1.5 minutes on 2 CPU cores).

Measured on 2 shared EPYC cores (docs/results/lazy_rich.md, which has the results): the
modadd study 43 min (the three 4,096-wide models 26 of them), `zhang ntk --steps all` on it
5.3 min; task=modadd_scales 3.2 min; task=digits 5.7 min, `zhang ntk` on it 1.7 min and with --steps 1.1 min. Within
two hours on 2 CPU cores; widths beyond 4,096 or larger moduli are an accelerator's.
"""

from zhang.errors import UsageError
from zhang.experiment.config import base_config, parse_arg


def _list(name: str, text: str, kind=float) -> list:
  try:
    return [kind(v) for v in text.split("+") if v]
  except ValueError:
    raise UsageError(f"config argument {name}={text!r}: give values joined by +, e.g. "
                     f"{name}=1+10") from None


def _modadd(c, a) -> None:
  c.dataset = "modadd"
  c.modulus, c.train_fraction = (23, 0.7) if a.quick else (59, 0.5)
  widths = [64, 256] if a.quick else _list("widths", a.widths, int)
  presets = ["standard", "mup"] if a.quick else _list("presets", a.presets, str)
  c.models = [f"mlp_tokens_{w}" + ("" if p == "standard" else f"_{p}")
              for w in widths for p in presets]
  c.model = c.models[0]
  c.max_steps = 300 if a.quick else a.max_steps
  c.batch_size = max(1, round(c.train_fraction * c.modulus ** 2))  # full batch
  c.eval_batch_size = c.modulus ** 2
  c.optimizer, c.learning_rate, c.lr_decay = "adamw", 0.01, 1.0
  c.adam_b1, c.adam_b2 = 0.9, 0.98
  c.eval_every = 20
  c.checkpoint_every = max(c.eval_every, c.max_steps // 10)
  c.keep_checkpoints = 11  # every one: the kernel's movement through training
  c.stop_at_fit = False
  c.grid = [dict(kinds=["labels"], corruptions=[0.0] if a.quick else [0.0, 0.3],
                 seeds=[0] if a.quick else [0, 1], weight_decays=[1.0])]


def _modadd_scales(c, a) -> None:
  _modadd(c, a)
  c.models, c.model = [], "mlp_tokens"
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 0.3], seeds=[0, 1], weight_decays=[1.0],
                 output_scales=_list("scales", a.scales))]


def _digits(c, a) -> None:
  c.dataset, c.model = "digits", "mlp_1x512"
  c.learning_rate, c.lr_decay_every = 0.01, 390
  c.max_steps, c.eval_every, c.checkpoint_every = 15000, 100, 1000
  c.keep_checkpoints = 16
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0, 1],
                 output_scales=_list("scales", a.scales))]


def get_config(arg=None):
  a = parse_arg(arg, task="modadd", widths="64+256+1024+4096", presets="standard+ntk+mup",
                scales="1+10+100", max_steps=2000, quick=False)
  c = base_config()
  tasks = {"modadd": _modadd, "digits": _digits, "modadd_scales": _modadd_scales}
  if a.task not in tasks:
    raise UsageError(f"config argument task={a.task!r}: use task=modadd, task=digits or "
                     f"task=modadd_scales")
  tasks[a.task](c, a)
  return c
