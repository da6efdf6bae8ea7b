"""Modular addition: the dataset, the token models, AdamW, and generalize_step."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zhang import cli
from zhang.cli import train as train_cli
from zhang.errors import UsageError
from zhang.experiment import config as config_lib
from zhang.experiment import data, models, step, train


def test_modadd_is_every_pair_once_with_its_sum_split_by_the_seed():
  d = data.load("modadd", options=dict(modulus=7, train_fraction=0.3, split_seed=1))
  assert d.inputs == "tokens" and d.num_classes == 7
  pairs = np.concatenate([d.train_images, d.test_images]).reshape(-1, 2).astype(int)
  labels = np.concatenate([d.train_labels, d.test_labels])
  assert len(d.train_labels) == round(0.3 * 49) and len(labels) == 49
  assert len({tuple(p) for p in pairs}) == 49  # every pair exactly once
  np.testing.assert_array_equal(labels, pairs.sum(1) % 7)
  again = data.load("modadd", options=dict(modulus=7, train_fraction=0.3, split_seed=1))
  np.testing.assert_array_equal(again.train_images, d.train_images)
  other = data.load("modadd", options=dict(modulus=7, train_fraction=0.3, split_seed=2))
  assert not np.array_equal(other.train_images, d.train_images)


@pytest.mark.parametrize("modulus,fraction,match", [
    (9, 0.3, "modulus=9 must be a prime"), (2, 0.3, "modulus=2 must be a prime"),
    (257, 0.3, "from 3 to 251"), (7, 1.0, r"train_fraction=1.0 must be in \(0, 1\)"),
    (7, 0.0, "train_fraction=0.0")])
def test_bad_modadd_arguments_are_one_line(modulus, fraction, match):
  with pytest.raises(UsageError, match=match):
    data.load("modadd", options=dict(modulus=modulus, train_fraction=fraction))


def _modadd_config(**fields):
  c = config_lib.load("configs/modadd.py:quick")
  for k, v in fields.items():
    c[k] = v
  return c


@pytest.mark.parametrize("fields,match", [
    (dict(model="mlp_1x512"), "model mlp_1x512 takes images, but dataset modadd is tokens"),
    (dict(grid=[dict(kinds=["random_pixels"], corruptions=[0.0], seeds=[0])]),
     "random_pixels randomizes pixels"),
    (dict(grid=[dict(kinds=["labels"], corruptions=[0.0], seeds=[0],
                     augmentations=["crop"])]), "augmentation crop is for images"),
    (dict(modulus=21), "modulus=21 must be a prime"),
    (dict(optimizer="lion"), "optimizer='lion' must be one of sgd_momentum, adamw"),
])
def test_modadd_config_errors_before_anything_runs(fields, match):
  with pytest.raises(UsageError, match=match):
    config_lib.validate(_modadd_config(**fields))


def test_modadd_config_arguments_set_the_grid_and_refuse_bad_levels(tmp_path, capsys):
  c = config_lib.load("configs/modadd.py:corruptions=0.1+0.3,weight_decays=1,max_steps=20000")
  assert config_lib.expand_grid(c) and [(r.corruption, r.weight_decay, r.seed)
                                        for r in config_lib.expand_grid(c)] == [
      (0.1, 1.0, 0), (0.1, 1.0, 1), (0.3, 1.0, 0), (0.3, 1.0, 1)]
  assert (c.eval_every, c.checkpoint_every, c.max_steps) == (100, 1000, 20000)
  code = cli.main(["train", "--config", "configs/modadd.py:corruptions=0.1+x",
                   "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 2 and "give numbers joined by +" in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists()


def test_the_transformer_on_images_is_refused_in_one_line(tmp_path, capsys):
  code = cli.main(["train", "--config", "configs/digits.py", "--workdir", str(tmp_path / "w"),
                   "--config.model=transformer_1l"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1
  assert "transformer_1l takes tokens" in err[0] and "mlp_1x512" in err[0]
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name,count", [
    # Embeddings 24x128 + positions 3x128, attention 4 x 128x128, MLP 128x512+512+512x128+128,
    # unembedding 128x23.
    ("transformer_1l", 24 * 128 + 3 * 128 + 4 * 128 * 128 + 128 * 512 + 512 + 512 * 128 + 128
     + 128 * 23),
    ("mlp_tokens", 46 * 512 + 512 + 512 * 23 + 23)])
def test_token_models_count_and_shape(name, count):
  assert models.param_count(name, (1, 2, 1), 23) == count
  module = models.get(name).build(23)
  x = jnp.asarray([[3, 4], [22, 0]], jnp.int32).reshape(2, 1, 2, 1)
  variables = module.init(jax.random.key(0), x, train=False)
  assert module.apply(variables, x, train=False).shape == (2, 23)


def test_transformer_reads_the_equals_token_causally():
  """The logits depend on both residues (the "=" position attends to a and b)."""
  module = models.get("transformer_1l").build(11)
  x = jnp.asarray([[1, 2], [2, 1], [1, 3]], jnp.int32)
  variables = module.init(jax.random.key(0), x, train=False)
  out = np.asarray(module.apply(variables, x, train=False))
  assert not np.allclose(out[0], out[2])  # b changed
  assert not np.allclose(out[0], out[1])  # order matters to an untrained model


def test_adamw_step_is_optax_adamw_at_the_replicas_rate_and_decay():
  params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
  grads = [{"w": jnp.asarray([0.3, -0.1, 0.2])}, {"w": jnp.asarray([-0.5, 0.4, 0.1])}]
  lr, wd = 0.01, 0.5
  ours = step.optimizer(wd, 0.9, "adamw", 0.9, 0.98)
  ref = optax.adamw(lr, b1=0.9, b2=0.98, eps=1e-8, weight_decay=wd)
  s1, s2, p1, p2 = ours.init(params), ref.init(params), params, params
  for g in grads:
    u1, s1 = ours.update(g, s1, p1)
    p1 = jax.tree.map(lambda p, u: p - lr * u, p1, u1)
    u2, s2 = ref.update(g, s2, p2)
    p2 = optax.apply_updates(p2, u2)
  np.testing.assert_allclose(p1["w"], p2["w"], rtol=1e-6)


@pytest.mark.slow
def test_quick_modadd_groks_true_labels_and_records_fit_and_generalize_steps(tmp_path):
  """configs/modadd.py:quick trains on past the fit to max_steps; the true-label replicas
  generalize (test accuracy >= 0.99) long after they fit, the random-label ones never; the
  summary's steps are the first evaluations that meet each threshold."""
  summary = train.run(config_lib.load("configs/modadd.py:quick"), tmp_path, progress=False)
  assert summary["steps_run"] == 1000
  printed = io.StringIO()  # the table zhang train prints: fit and generalize steps
  with contextlib.redirect_stdout(printed):
    train_cli.print_run(summary, config_lib.resolve(config_lib.load("configs/modadd.py:quick")))
  lines = printed.getvalue().splitlines()
  generalized = sum(r["generalize_step"] is not None for r in summary["replicas"])
  n = len(summary["replicas"])
  assert f"; {generalized}/{n} generalized (test accuracy >= 0.99)" in lines[0]
  assert lines[1].split()[5:7] == ["fit_step", "gen_step"]
  for line, rep in zip(lines[2:], summary["replicas"]):
    assert line.split()[5:7] == [str(rep["fit_step"]), str(rep["generalize_step"] or "-")]
  rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  for rep in summary["replicas"]:
    mine = sorted((r for r in rows if r["replica"] == rep["replica"]), key=lambda r: r["step"])
    fit = next((r["step"] for r in mine if r["train_acc"] >= 1.0), None)
    gen = next((r["step"] for r in mine if r["test_acc"] >= 0.99), None)
    assert rep["fit_step"] == fit and rep["generalize_step"] == gen
    assert fit is not None  # both memorize the training pairs
    if rep["corruption"] == 0:
      assert gen is not None and gen > fit  # grokking: generalization after the fit
    else:
      assert gen is None and rep["final_test_acc"] < 0.2
  # The report's grokking table and figure, from the run's files.
  from zhang import analysis
  from zhang.analysis import grokking, report
  runs = analysis.load_runs(tmp_path)
  assert grokking.applies(runs)
  table = grokking.summary_table(grokking.steps(runs))
  clean = table[table.corruption == 0].iloc[0]
  reps = [r for r in summary["replicas"] if r["corruption"] == 0]
  assert clean.n_generalized == len(reps) == clean.n
  assert clean.generalize_step == pytest.approx(np.mean([r["generalize_step"] for r in reps]))
  assert table[table.corruption == 1].iloc[0].n_generalized == 0
  s = grokking.steps(runs).set_index("replica")
  for rep in summary["replicas"]:  # half step and best test accuracy, from the curves
    mine = sorted((r for r in rows if r["replica"] == rep["replica"]), key=lambda r: r["step"])
    half = next((r["step"] for r in mine if r["test_acc"] >= grokking.HALF), np.nan)
    np.testing.assert_equal(s.loc[rep["replica"], "half_step"], half)
    assert s.loc[rep["replica"], "best_test_acc"] == max(r["test_acc"] for r in mine)
  # The kernel baseline on the run's own split (`zhang kernel RUN --out OUT`): both kernels
  # fit the training pairs, and neither predicts the sums of the test pairs, which the
  # trained network does.
  assert cli.main(["kernel", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
  written = {p.name for p in report.write_report([tmp_path], tmp_path / "report", n_boot=0)}
  assert {"grokking.png", "grokking_steps.png"} <= written
  text = (tmp_path / "report" / "report.md").read_text()
  assert "## Fit and generalization (grokking)" in text and "p = 1 never reaches 50%" in text
  from zhang.analysis import kernel_baseline
  cached = json.loads((tmp_path / "report" / kernel_baseline.FILE).read_text())
  assert [c["key"]["modulus"] for c in cached] == [23]
  assert cached[0]["n_train"] == round(0.7 * 23 ** 2)
  for row in cached[0]["rows"]:
    assert row["train_acc"] == 1.0 and row["test_acc"] < 0.2, row
  assert "## The kernel baseline" in text and "NTK of mlp_tokens at initialization" in text


def test_kernel_baseline_on_modadd_fits_and_does_not_generalize(capsys):
  """`zhang kernel --dataset modadd`: one-hot features of (a, b); the RBF interpolant fits
  every training pair and gets test pairs wrong (the kernel only sees shared residues)."""
  from zhang.probes.kernels import features
  from zhang.probes.kernels import interpolation as kernels
  d = data.load("modadd", options=dict(modulus=11, train_fraction=0.5))
  fmap = features.get("onehot", d.train_images.shape[1:], vocab=11)
  x = fmap.blocks[0][1](d.train_images[:5])
  ids = d.train_images[:5].reshape(5, 2)
  want = np.zeros((5, 22))
  want[np.arange(5), ids[:, 0]] = 1
  want[np.arange(5), 11 + ids[:, 1]] = 1
  np.testing.assert_array_equal(x, want)
  result = kernels.evaluate(d, len(d.train_labels), len(d.test_labels), kernel="rbf",
                            features="onehot")
  assert result["train_error"] == 0.0 and result["test_error"] > 0.9
  with pytest.raises(UsageError, match="token inputs: use `features` onehot"):
    kernels.evaluate(d, 10, 10, features="raw")
  code = cli.main(["kernel", "--dataset", "modadd", "--modulus", "11", "--train_fraction",
                   "0.5", "--n", "0", "--json"])
  out = capsys.readouterr().out
  assert code == 0 and json.loads(out)["test_error"] == pytest.approx(result["test_error"])
  code = cli.main(["kernel", "--dataset", "modadd", "--modulus", "12"])
  assert code == 2 and "modulus=12 must be a prime" in capsys.readouterr().err


def test_ntk_kernel_baseline_on_modadd_interpolates_and_refuses_images(capsys):
  """`zhang kernel --dataset modadd --kernel ntk`: the tangent kernel of mlp_tokens at its
  initialization fits every training pair; on images it points at `zhang ntk RUN`."""
  code = cli.main(["kernel", "--dataset", "modadd", "--modulus", "11", "--train_fraction",
                   "0.5", "--n", "0", "--kernel", "ntk", "--json"])
  out = capsys.readouterr().out
  assert code == 0
  result = json.loads(out)
  assert result["kernel"] == "ntk" and result["model"] == "mlp_tokens"
  assert result["n_train"] == round(0.5 * 121) and result["train_error"] == 0.0
  assert result["feature_dim"] == models.param_count("mlp_tokens", (1, 2, 1), 11)
  assert result["test_error"] > 0.5  # the kernel regime does not learn the addition
  code = cli.main(["kernel", "--dataset", "digits", "--kernel", "ntk"])
  assert code == 2 and "use `zhang ntk RUN`" in capsys.readouterr().err


@pytest.mark.slow
def test_the_transformers_tangent_kernel_generalizes_by_commutativity_only(capsys):
  """Test pairs whose commuted pair (b, a) trains, by brute force; the transformer's tangent
  kernel at initialization is nearly symmetric in a and b (the position embeddings are all
  that tell a from b), so it gets those right and the others wrong: its test accuracy is
  commutativity, not addition (at this size: every one and none)."""
  d = data.load("modadd", options=dict(modulus=11, train_fraction=0.5))
  train = {tuple(p) for p in d.train_images.reshape(-1, 2).tolist()}
  want = [(b, a) in train for a, b in d.test_images.reshape(-1, 2).tolist()]
  np.testing.assert_array_equal(data.commuted_in_train(d), want)
  code = cli.main(["kernel", "--dataset", "modadd", "--modulus", "11", "--train_fraction",
                   "0.5", "--n", "0", "--kernel", "ntk", "--model", "transformer_1l",
                   "--json"])
  result = json.loads(capsys.readouterr().out)
  assert code == 0 and result["train_error"] == 0.0
  assert result["commuted_in_train"] == pytest.approx(np.mean(want))
  assert result["test_error_commuted_in_train"] <= 0.1
  assert result["test_error_commuted_not_in_train"] >= 0.9


def test_a_singular_tangent_kernel_is_solved_with_the_smallest_ridge_that_works(monkeypatch):
  """The fallback ladder: 1e-6 x the mean diagonal, then 100x larger until Cholesky
  succeeds; the ridge used is recorded, and without the fallback the error is raised."""
  from zhang.probes.kernels import interpolation as kernels
  from zhang.probes.ntk import empirical as ntk
  d = data.load("modadd", options=dict(modulus=11, train_fraction=0.5))
  n, n_test = len(d.train_labels), len(d.test_labels)
  exact = ntk.token_interpolation(d, n, n_test, "mlp_tokens", seed=0)
  real_solve, seen = kernels.solve, []

  def solve_refusing_small_ridges(k, y, ridge=0.0):
    seen.append(ridge)
    scale = float(np.mean(np.diagonal(k)))
    if ridge < 1e-3 * scale:  # as if K were singular below this ridge
      raise kernels.SingularKernelError("singular (test)")
    return real_solve(k, y, ridge)

  monkeypatch.setattr(kernels, "solve", solve_refusing_small_ridges)
  with pytest.raises(kernels.SingularKernelError):
    ntk.token_interpolation(d, n, n_test, "mlp_tokens", seed=0)
  seen.clear()
  r = ntk.token_interpolation(d, n, n_test, "mlp_tokens", seed=0, singular_ridge=1e-6)
  assert r["singular"] and len(seen) == 4  # 0, 1e-6, 1e-4, then 1e-2 x the scale solves
  assert seen[3] == pytest.approx(1e2 * seen[2]) == pytest.approx(1e4 * seen[1])
  assert r["ridge"] == seen[3] and r["train_error"] == 0.0
  assert r["test_error"] == pytest.approx(exact["test_error"], abs=0.05)


@pytest.fixture(scope="module")
def short_modadd_run(tmp_path_factory):
  """configs/modadd.py:quick for 40 steps (every replica fits its training pairs by step 20;
  about 20 s): a run with a checkpoint, for the probes."""
  workdir = tmp_path_factory.mktemp("modadd") / "run"
  train.run(config_lib.load("configs/modadd.py:quick", ["max_steps=40"]), workdir,
            progress=False)
  return workdir


@pytest.mark.slow
def test_the_kernel_baseline_is_a_probe_that_the_report_reads(short_modadd_run, tmp_path,
                                                              capsys):
  """`zhang kernel RUN --out OUT` writes OUT/kernel_baseline.json, naming its run;
  `zhang report RUN --out OUT` only reads it: without it the report names the command,
  with another run's it says so and skips it."""
  from zhang.analysis import kernel_baseline
  from zhang.formatting import pct
  from zhang.probes import run as run_lib
  from zhang.probes.kernels import baseline
  run, out = short_modadd_run, tmp_path / "report"
  report = ["report", str(run), "--out", str(out), "--n_boot", "0"]
  assert cli.main(report) == 0  # nothing computed: the section names the command
  assert not (out / kernel_baseline.FILE).exists()
  text = (out / "report.md").read_text()
  assert f"`zhang kernel {run} --out {out}` writes it" in text
  capsys.readouterr()
  assert cli.main(["kernel", str(run), "--out", str(out)]) == 0
  assert str(out / kernel_baseline.FILE) in capsys.readouterr().out
  (entry,) = json.loads((out / kernel_baseline.FILE).read_text())
  summary = json.loads((run / "summary.json").read_text())
  assert entry["settings"] == dict(run=str(run), config_hash=summary["config_hash"])
  assert entry["key"] == dict(dataset="modadd", modulus=23, train_fraction=0.7, split_seed=0,
                              model="mlp_tokens")
  d = data.load("modadd", options=dict(modulus=23, train_fraction=0.7, split_seed=0))
  assert (entry["n_train"], entry["n_test"]) == (len(d.train_labels), len(d.test_labels))
  assert entry["commuted_in_train"] == pytest.approx(np.mean(data.commuted_in_train(d)))
  assert [r["kernel"] for r in entry["rows"]] == ["rbf", "ntk"]
  assert all(r["train_acc"] == 1.0 for r in entry["rows"])  # both interpolate
  # The report reads it, beside the trained networks' final test accuracy (summary.json).
  assert cli.main(report) == 0
  text = (out / "report.md").read_text()
  rbf, tangent = entry["rows"]
  assert (f"| RBF on one-hot (a, b) | 100.0 | {pct(rbf['test_acc'])} | "
          f"{pct(rbf['test_acc_commuted'])} | {pct(rbf['test_acc_not_commuted'])} |") in text
  assert f"| NTK of mlp_tokens at initialization | 100.0 | {pct(tangent['test_acc'])} |" in text
  true = [r for r in summary["replicas"] if r["corruption"] == 0]
  assert (f"| mlp_tokens trained (lr 0.03, weight decay 1; {len(true)} replicas; final / "
          f"best) | {pct(np.mean([r['final_train_acc'] for r in true]))} | "
          f"{pct(np.mean([r['final_test_acc'] for r in true]))} / ") in text
  assert "writes it" not in text and "skipped" not in capsys.readouterr().err
  # Another run's file in the same folder: not embedded, said in the section and once on
  # the terminal.
  other = dict(entry, settings=dict(run="runs/other", config_hash="0123456789abcdef"))
  (out / kernel_baseline.FILE).write_text(json.dumps([other]))
  assert cli.main(report) == 0
  text = (out / "report.md").read_text()
  assert "| RBF on one-hot (a, b) |" not in text
  assert ("was computed from runs/other (config hash 0123456789abcdef), not from the runs "
          "reported here: skipped.") in text
  assert f"`zhang kernel {run} --out {out}` writes it" in text
  err = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
  assert len(err) == 1 and "runs/other (config hash 0123456789abcdef)" in err[0]
  # `zhang kernel` again keeps the other run's entry beside this run's.
  assert cli.main(["kernel", str(run), "--out", str(out)]) == 0
  kept = json.loads((out / kernel_baseline.FILE).read_text())
  assert [e["settings"]["run"] for e in kept] == ["runs/other", str(run)]
  # A tangent kernel over the budget is skipped, with the flag that allows it.
  over = baseline.compute(run_lib.open(run), max_flops=1.0)
  assert over["rows"][0] | {"seconds": 0} == rbf | {"seconds": 0}
  assert "--max_tflop" in over["rows"][1]["skipped"]
  from zhang.analysis import load
  lines = kernel_baseline.report_lines([over], load.load_runs(run), out)
  assert any("NTK of mlp_tokens at initialization was not computed: about" in line
             for line in lines)
