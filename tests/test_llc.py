"""The local learning coefficient: known truths, reproducibility, and `zhang llc` on a run."""

import hashlib
import json
import math
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zhang import cli
from zhang.experiment import config as config_lib
from zhang.experiment import train
from zhang.probes.llc import estimate as llc
from zhang.probes.llc import sgld

D = 10  # the regression's parameters: lambda = d/2


def _regression(n=1000, d=D, seed=0):
  """y = x w + noise, x ~ N(0, I); sigma such that n beta h = 1000 at n beta = n / log n
  (h = 1 / sigma^2, the curvature of every direction): gamma = 100 is a tenth of it."""
  rng = np.random.default_rng(seed)
  sigma = math.sqrt(n / math.log(n) / 1000)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x @ rng.normal(size=d) + sigma * rng.normal(size=n)).astype(np.float32)
  w_star = np.linalg.lstsq(x, y, rcond=None)[0].astype(np.float32)  # the trained model
  xs, ys = jnp.asarray(x), jnp.asarray(y)
  loss = lambda w, i: jnp.mean((ys[i] - xs[i] @ w) ** 2) / (2 * sigma ** 2)  # Gaussian NLL
  return loss, jnp.asarray(w_star), n, x, sigma


def _product(n=1000, a0=1.0, seed=0):
  """f(x) = a b x with the least-squares a b exactly 0 (the noise is made orthogonal to x):
  at w* = (a0, 0) the loss is flat along a and quadratic in b only, lambda = 1/2."""
  rng = np.random.default_rng(seed)
  sigma = math.sqrt(n / math.log(n) / 1000)
  x = rng.normal(size=n)
  e = sigma * rng.normal(size=n)
  e -= x * (x @ e) / (x @ x)
  xs, ys = jnp.asarray(x, jnp.float32), jnp.asarray(e, jnp.float32)
  loss = lambda w, i: jnp.mean((ys[i] - w[0] * w[1] * xs[i]) ** 2) / (2 * sigma ** 2)
  return loss, jnp.asarray([a0, 0.0], jnp.float32), n, x, sigma


def test_full_rank_linear_regression_has_lambda_d_over_2():
  """16 chains: the step's discretization bias puts the estimate about 9% above the exact
  expectation, and one seed's 4 chains swing by 4% either way (4.62-5.18 over 8 seeds)."""
  loss, w_star, n, x, sigma = _regression()
  result = llc.sample(loss, w_star, n, llc.Settings(chains=16))
  assert result["nbeta"] == pytest.approx(n / math.log(n))
  assert result["num_params"] == D and result["diverged_chains"] == 0 and result["settled"]
  assert abs(result["llc"] - D / 2) < 0.15 * D / 2, result["llc"]
  # The tempered posterior is Gaussian here: E[n beta (L - L*)] = 1/2 sum n beta h_i /
  # (n beta h_i + gamma) over the Hessian's eigenvalues h_i, the value at these settings.
  h = np.linalg.eigvalsh(x.T @ x / n / sigma ** 2)
  nb, gamma = result["nbeta"], llc.Settings().gamma
  exact = 0.5 * np.sum(nb * h / (nb * h + gamma))
  assert abs(result["llc"] - exact) < 0.12 * exact
  assert result["trace"].shape == (16, 1300) and np.isfinite(result["trace"]).all()


def test_degenerate_product_has_lambda_one_half_not_one():
  """More chains than the default only average more independent estimates: one chain's
  estimate of a two-parameter model swings by about 25%."""
  loss, w_star, n, _, _ = _product()
  result = llc.sample(loss, w_star, n, llc.Settings(chains=16))
  assert result["num_params"] == 2
  assert abs(result["llc"] - 0.5) < 0.15 * 0.5, result["llc"]  # not 1, the regular count
  assert result["llc_se"] < 0.05


def test_the_chains_noise_is_standard_normal_and_independent():
  """``normal_pairs`` (Box-Muller of Threefry words) against the normal distribution: the
  moments to a few standard errors, the Kolmogorov-Smirnov distance, no correlation between a
  pair's two normals or between neighbours, and keys of another implementation."""
  keys = jax.random.split(jax.random.key(7), 64)
  pairs = np.asarray(jax.jit(jax.vmap(lambda k: sgld.normal_pairs(k, 20_001)))(keys))
  z = np.concatenate([pairs.real.ravel(), pairs.imag.ravel()]).astype(np.float64)
  n = z.size  # 2.56 million
  for moment, exact, var in ((1, 0.0, 1.0), (2, 1.0, 2.0), (3, 0.0, 15.0), (4, 3.0, 96.0)):
    assert abs(np.mean(z ** moment) - exact) < 5 * math.sqrt(var / n), moment
  sorted_z = np.sort(z[:400_000])
  cdf = 0.5 * (1 + np.vectorize(math.erf)(sorted_z / math.sqrt(2)))
  steps = np.arange(1, sorted_z.size + 1) / sorted_z.size
  assert np.max(np.abs(cdf - steps)) * math.sqrt(sorted_z.size) < 1.95  # KS at p = 0.001
  # Beyond 4 sigma: the tail is there, at its rate (6.3e-5).
  assert abs(np.mean(np.abs(z) > 4) - 6.334e-5) < 5 * math.sqrt(6.334e-5 / n)
  for a, b in ((pairs.real, pairs.imag), (pairs.real[:, 1:], pairs.real[:, :-1]),
               (pairs[:-1].imag, pairs[1:].imag)):
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / math.sqrt(a.size)
  # Keys of another implementation: jax.random.normal's normals.
  other = sgld.normal_pairs(jax.random.key(0, impl="rbg"), 5)
  assert other.shape == (5,) and other.dtype == jnp.complex64 and np.isfinite(other).all()


def test_a_quadratic_of_20000_parameters_gives_the_discrete_chains_exact_value():
  """Without data, L(w) = h/2 |w - w*|^2: every coordinate of an SGLD chain is then an AR(1)
  process whose stationary variance is exactly 1 / (a (1 - eps a / 4)), a = n beta h + gamma,
  the step's discretization included, so E[n beta (L - L*)] = d/2 n beta h / (a (1 - eps a /
  4)). Over 20,000 parameters (two leaves of odd sizes: the pairs' padding) the estimate
  has a standard error near 0.1%: a noise variance off by a fraction of a percent, or
  parameters left out or noised twice, shows."""
  nbeta, gamma, eps = 145.0, 100.0, 1e-4
  h = 1000.0 / nbeta
  w_star = {"a": jnp.zeros((101, 99)), "b": jnp.ones(10_001)}

  def loss(w, indices):
    return 0.5 * h * sum(jnp.sum((x - c) ** 2) for x, c in zip(jax.tree.leaves(w),
                                                               jax.tree.leaves(w_star)))

  d, a = 101 * 99 + 10_001, nbeta * h + gamma
  exact = d / 2 * nbeta * h / (a * (1 - eps * a / 4))  # 9,348 (9,090 without the eps term)
  result = llc.sample(loss, w_star, 1000, llc.Settings(nbeta=nbeta, step_size=eps,
                                                       gamma=gamma), init_loss=0.0)
  assert result["num_params"] == d
  assert abs(result["llc"] / exact - 1) < 0.005, (result["llc"], exact)


def test_the_noise_angle_polynomials_are_sin_and_cos_to_float_rounding():
  phi = np.linspace(0, math.pi / 4, 100_001).astype(np.float32)
  sin, cos = jax.jit(sgld._sin_cos)(phi)
  assert np.max(np.abs(np.asarray(sin) - np.sin(phi.astype(np.float64)))) < 2e-7
  assert np.max(np.abs(np.asarray(cos) - np.cos(phi.astype(np.float64)))) < 2e-7


def test_pairs_hold_every_parameter_and_give_it_back():
  rng = np.random.default_rng(0)
  for n in (1, 2, 7, 38410):
    flat = jnp.asarray(rng.normal(size=(3, n)), jnp.float32)
    pairs = sgld.to_pairs(flat)
    assert pairs.shape == (3, -(-n // 2)) and pairs.dtype == jnp.complex64
    np.testing.assert_array_equal(sgld.from_pairs(pairs, n), flat)
    np.testing.assert_array_equal(pairs[:, 0].real, flat[:, 0])  # neighbours pair up
  tree = {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
          "bias": jnp.asarray(rng.normal(size=3), jnp.bfloat16)}
  back = sgld.unpair_leaves(sgld.pair_leaves(tree), tree)
  for k in tree:
    assert back[k].shape == tree[k].shape and back[k].dtype == tree[k].dtype
    np.testing.assert_array_equal(back[k], tree[k])


def test_the_estimate_is_reproducible_from_the_seed():
  loss, w_star, n, _, _ = _regression(n=300)
  s = llc.Settings(chains=2, draws=100, burnin=20, seed=3)
  a, b = llc.sample(loss, w_star, n, s), llc.sample(loss, w_star, n, s)
  np.testing.assert_array_equal(a["trace"], b["trace"])
  assert a["llc"] == b["llc"]
  c = llc.sample(loss, w_star, n, llc.Settings(chains=2, draws=100, burnin=20, seed=4))
  assert not np.allclose(a["trace"], c["trace"])
  # Chains of one seed differ from each other.
  assert not np.allclose(a["trace"][0], a["trace"][1])


def test_a_bad_step_size_diverges_and_is_counted():
  loss, w_star, n, _, _ = _regression(n=300)
  result = llc.sample(loss, w_star, n, llc.Settings(step_size=0.5, chains=2, draws=50,
                                                    burnin=0))
  assert result["diverged_chains"] == 2 and result["llc"] is None


def test_estimate_flags_diverged_and_unsettled_chains():
  rng = np.random.default_rng(0)
  flat = 1.0 + 0.01 * rng.normal(size=(3, 400))
  est = llc.estimate(flat, 0.9, 10.0, 100, num_params=50)
  assert est["llc"] == pytest.approx(10.0 * (flat[:, 100:].mean() - 0.9))
  assert est["llc_std"] == pytest.approx(np.std(10.0 * (flat[:, 100:].mean(1) - 0.9), ddof=1))
  assert est["llc_se"] == pytest.approx(est["llc_std"] / math.sqrt(3))
  assert est["settled"] and est["diverged_chains"] == 0
  rising = flat + np.linspace(0, 1, 400)  # still climbing at the end
  assert llc.estimate(rising, 0.9, 10.0, 100, num_params=50)["settled"] is False
  bad = flat.copy()
  bad[0, 300] = np.nan
  bad[1] += 10.0  # its estimate (about 101) is more than twice d/2 = 25: exploding
  est = llc.estimate(bad, 0.9, 10.0, 100, num_params=50)
  assert est["diverged_chains"] == 2
  assert est["llc"] == pytest.approx(10.0 * (flat[2, 100:].mean() - 0.9))


def test_nbeta_rules():
  assert llc.resolve_nbeta("n", 1438, 128) == pytest.approx(1438 / math.log(1438))
  assert llc.resolve_nbeta("batch", 1438, 128) == pytest.approx(128 / math.log(128))
  assert llc.resolve_nbeta("50", 1438, 128) == 50.0
  for bad in ("zero", "-1", "0", "nan"):
    with pytest.raises(llc.UsageError, match="`nbeta` must be"):
      llc.parse_nbeta(bad)


def test_sweep_syntax():
  assert llc.parse_sweep(["step_size=1e-5,1e-4,gamma=100,1000"]) == {
      "step_size": [1e-5, 1e-4], "gamma": [100.0, 1000.0]}
  assert llc.parse_sweep(["nbeta=n,batch", "chains=2"]) == {"nbeta": ["n", "batch"],
                                                            "chains": [2]}
  for bad, message in (("lr=1", "unknown setting 'lr'"), ("1e-5", "has no setting"),
                       ("draws=many", "not a valid value"), ("gamma=1,gamma=2", "twice")):
    with pytest.raises(llc.UsageError, match=message):
      llc.parse_sweep([bad])


def test_the_command_line_defaults_are_the_settings_defaults():
  args = cli.build_parser().parse_args(["llc", "RUN"])
  s = llc.Settings()
  assert (args.step_size, args.gamma, args.nbeta, args.chains, args.draws, args.burnin,
          args.batch_size, args.seed) == (s.step_size, s.gamma, s.nbeta, s.chains, s.draws,
                                          s.burnin, s.batch_size, s.seed)


# --------------------------------------------------------------------------- on a run

FAST = ["--chains", "2", "--draws", "40", "--burnin", "10"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A finished run of 4 replicas (true and random labels, random pixels, gaussian) with
  checkpoints at steps 20, 40 and 60."""
  c = config_lib.base_config()
  c.model, c.dataset = "mlp_1x512", "digits"
  c.n_train, c.n_test = 256, 128
  c.batch_size, c.max_steps, c.eval_every, c.eval_batch_size = 32, 60, 20, 100
  c.checkpoint_every, c.lr_decay_every = 20, 25
  c.grid = [dict(kinds=["labels"], corruptions=[0.0, 1.0], seeds=[0]),
            dict(kinds=["random_pixels", "gaussian"], corruptions=[0.0], seeds=[1])]
  workdir = tmp_path_factory.mktemp("llc") / "run"
  train.run(c, workdir, progress=False)
  return workdir


def _snapshot(folder):
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest())
          for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_zhang_llc_writes_every_replica_and_step_and_leaves_the_run_alone(run_dir, tmp_path,
                                                                          capsys):
  before = _snapshot(run_dir)
  out = tmp_path / "llc"
  code = cli.main(["llc", str(run_dir), "--out", str(out), "--steps", "all", "--seed", "7",
                   *FAST])
  printed = capsys.readouterr()
  assert code == 0, printed.err
  assert _snapshot(run_dir) == before
  result = json.loads((out / "llc.json").read_text())
  assert set(result) == {"settings", "replicas"}
  s = result["settings"]
  # Provenance, as the report checks it: the run's path and config hash.
  summary = json.loads((run_dir / "summary.json").read_text())
  assert s["run"] == str(run_dir) and s["config_hash"] == summary["config_hash"]
  assert (s["chains"], s["draws"], s["burnin"], s["seed"], s["steps"]) == (2, 40, 10, 7,
                                                                           [20, 40, 60])
  assert (s["step_size"], s["gamma"], s["batch_size"], s["nbeta_rule"]) == (1e-4, 100.0, 32, "n")
  assert s["nbeta"] == pytest.approx(256 / math.log(256))
  entries = result["replicas"]
  assert [(e["step"], e["replica"]) for e in entries] == [
      (step, r) for step in (20, 40, 60) for r in range(4)]
  assert [e["kind"] for e in entries[:4]] == ["labels", "labels", "random_pixels", "gaussian"]
  for e in entries:
    for key in ("replica", "kind", "corruption", "seed", "step", "llc", "llc_std",
                "num_params"):
      assert key in e
    assert e["num_params"] == 8 * 8 * 512 + 512 + 512 * 10 + 10
    assert len(e["llc_per_chain"]) == 2
    if e["llc"] is not None:
      assert e["llc"] == pytest.approx(np.mean(e["llc_per_chain"]))
  # L_n(w*) is the run's own train loss at that step: the same labels and randomized inputs.
  rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  train_loss = {(r["step"], r["replica"]): r["train_loss"] for r in rows}
  for e in entries:
    assert e["init_loss"] == pytest.approx(train_loss[(e["step"], e["replica"])], rel=1e-4)
  traces = np.load(out / "llc_traces.npz")
  assert traces["traces"].shape == (12, 2, 50)
  np.testing.assert_array_equal(traces["step"], [e["step"] for e in entries])
  for e, trace in zip(entries, traces["traces"]):  # the json's estimate is the trace's
    if e["llc"] is not None:
      assert e["llc"] == pytest.approx(s["nbeta"] * (trace[:, 10:].mean() - e["init_loss"]),
                                       rel=1e-4, abs=1e-3)
  for name in ("llc_traces.png", "llc_vs_corruption.png", "llc_vs_step.png"):
    assert (out / name).stat().st_size > 10_000
  assert "| true labels | 1 |" in printed.out
  _check_report(run_dir, out, result)
  # The same seed gives the same numbers.
  again = tmp_path / "again"
  assert cli.main(["llc", str(run_dir), "--out", str(again), "--steps", "60", "--seed", "7",
                   "--no_plots", *FAST]) == 0
  assert json.loads((again / "llc.json").read_text())["replicas"] == entries[-4:]


def _check_report(run_dir, out, result: dict) -> None:
  """The library reads llc.json back and describes the same numbers; `zhang report` embeds
  them."""
  entries = result["replicas"]
  loaded = llc.load(out)
  assert loaded == result
  lines = llc.report_lines(loaded)
  true = next(e for e in entries if e["step"] == 60 and e["replica"] == 0)
  assert any(line.startswith(f"| true labels | 1 | {true['llc']:.3g} |") for line in lines)
  from zhang.analysis import (
    llc as llc_report,  # through training: the true-label replica at each step
  )
  for step in (20, 40, 60):
    e = next(e for e in entries if e["step"] == step and e["replica"] == 0)
    assert f"| {step} | {llc_report._num(e['llc'])} |" in "\n".join(lines)
  # `zhang report RUN --out` the same folder embeds the section and its figure.
  from zhang.analysis import report
  written = {q.name for q in report.write_report([run_dir], out, n_boot=0)}
  assert {"llc_vs_corruption.png", "llc_vs_step.png", "report.md"} <= written
  text = (out / "report.md").read_text()
  assert "## Local learning coefficient" in text and "(llc_vs_corruption.png)" in text
  assert f"| true labels | 1 | {true['llc']:.3g} |" in text


@pytest.mark.slow
def test_sweep_prints_every_combination(run_dir, capsys):
  code = cli.main(["llc", str(run_dir), "--sweep", "step_size=1e-5,1e-4", "--sweep",
                   "gamma=100,1000", *FAST])
  out = capsys.readouterr().out
  assert code == 0
  assert "A: step_size=1e-05, gamma=100" in out and "D: step_size=0.0001, gamma=1000" in out
  rows = [line.split() for line in out.splitlines() if line.strip().startswith("0 ")]
  # replica, "true", "labels", seed, step, and one estimate per combination
  assert len(rows) == 1 and len(rows[0]) == 5 + 4


def _one_line_error(capsys) -> str:
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  return err


@pytest.mark.parametrize("args,message", [
    (["--step_size", "0"], "--step_size must be a positive number"),
    (["--gamma", "-1"], "--gamma must be a positive number"),
    (["--draws", "0"], "--draws must be an integer >= 1"),
    (["--steps", "50"], "no checkpoint of step 50 in this run: saved steps are 20, 40, 60"),
    (["--steps", "soon"], "--steps 'soon' must be last, all"),
    (["--nbeta", "hot"], "--nbeta must be n"),
    (["--batch_size", "1000"], "--batch_size 1000 is more than the 256 training examples"),
    # 4 replicas x 10^6 chains x 38,410 parameters x 12 bytes: 1.8 TB, before compiling.
    (["--chains", "1000000"], "4 replicas x 1,000,000 chains of mlp_1x512 needs at least"),
])
def test_bad_settings_exit_2_with_one_line(run_dir, tmp_path, capsys, args, message):
  before = _snapshot(run_dir)
  code = cli.main(["llc", str(run_dir), "--out", str(tmp_path / "out"), *args])
  assert code == 2
  assert message in _one_line_error(capsys)
  assert not (tmp_path / "out").exists()
  assert _snapshot(run_dir) == before


def test_a_folder_without_a_run_or_checkpoints_exits_2(run_dir, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert cli.main(["llc", str(empty), "--out", str(tmp_path / "out")]) == 2
  assert "config.json is missing" in _one_line_error(capsys)
  for name in ("config.json", "summary.json"):
    shutil.copy(run_dir / name, empty / name)
  assert cli.main(["llc", str(empty), "--out", str(tmp_path / "out")]) == 2
  assert "has no checkpoints/ folder" in _one_line_error(capsys)
  (empty / "checkpoints").mkdir()
  assert cli.main(["llc", str(empty), "--out", str(tmp_path / "out")]) == 2
  assert "holds no complete checkpoint" in _one_line_error(capsys)
  assert not (tmp_path / "out").exists()


def test_library_errors_name_settings_not_flags(run_dir, tmp_path):
  """The library names the setting (in backticks); `zhang llc` prints it as its flag."""
  for settings, message in ((llc.Settings(step_size=0), "`step_size` must be a positive"),
                            (llc.Settings(draws=0), "`draws` must be an integer >= 1"),
                            (llc.Settings(batch_size=1000), "`batch_size` 1000 is more than")):
    with pytest.raises(llc.UsageError) as e:
      llc.estimate_run(run_dir, tmp_path / "out", settings)
    assert message in str(e.value) and "--" not in str(e.value)
  with pytest.raises(llc.UsageError, match="`steps` 'soon' must be last, all"):
    llc.estimate_run(run_dir, tmp_path / "out", steps="soon")
  with pytest.raises(llc.UsageError, match="`out` .* is inside the run's directory"):
    llc.estimate_run(run_dir, run_dir / "llc")
  warnings = []
  llc.diagnose([dict(replica=0, kind="labels", corruption=0.0, seed=0, step=60, llc=-1.0,
                     diverged_chains=1, settled=True, drift=0.0)],
               llc.Settings(chains=2), warn=warnings.append)
  assert len(warnings) == 2 and "lower `step_size` (now 0.0001) or raise `gamma`" in warnings[0]
  assert "raise `gamma` (now 100)" in warnings[1]


@pytest.mark.slow
def test_out_inside_the_run_is_refused(run_dir, capsys):
  before = _snapshot(run_dir)
  assert cli.main(["llc", str(run_dir), "--out", str(run_dir / "llc"), *FAST]) == 2
  assert "inside the run's directory" in _one_line_error(capsys)
  assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_a_sampler_that_diverges_for_every_chain_exits_2(run_dir, tmp_path, capsys):
  before = _snapshot(run_dir)
  code = cli.main(["llc", str(run_dir), "--out", str(tmp_path / "out"), "--step_size", "30",
                   *FAST])
  assert code == 2
  assert "every chain diverged" in (err := _one_line_error(capsys))
  assert "lower --step_size" in err
  assert not (tmp_path / "out").exists()
  assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_replicas_split_over_devices_give_the_same_estimates(run_dir, tmp_path):
  """The replica axis on a mesh of 2 devices (2 replicas each) against 1 device."""
  args = ["llc", str(run_dir), "--steps", "60", "--seed", "5", "--no_plots", *FAST]
  assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
  script = ("import sys, jax; jax.config.update('jax_num_cpu_devices', 2)\n"
            "from zhang import cli; sys.exit(cli.main(sys.argv[1:]))\n")
  proc = subprocess.run([sys.executable, "-c", script, *args, "--out", str(tmp_path / "two")],
                        cwd=pathlib.Path(__file__).parents[1], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  one, two = (json.loads((tmp_path / name / "llc.json").read_text()) for name in ("one", "two"))
  assert one["settings"]["mesh"] == [1, 1] and two["settings"]["mesh"] == [2, 1]
  for a, b in zip(one["replicas"], two["replicas"]):
    assert b["init_loss"] == pytest.approx(a["init_loss"], rel=1e-5)
    assert b["llc_per_chain"] == pytest.approx(a["llc_per_chain"], rel=1e-3, abs=1e-3)


def test_inputs_made_once_equal_inputs_made_every_step(run_dir, tmp_path, monkeypatch):
  """The sampler's table of every replica's inputs (``estimate._table``) against the inputs
  made from the images at every step, as the trainer makes them: the same chains. The two
  make each input by the same operations, so they agree to float rounding."""
  args = ["llc", str(run_dir), "--steps", "60", "--seed", "5", "--no_plots", *FAST]
  assert cli.main([*args, "--out", str(tmp_path / "table")]) == 0
  monkeypatch.setattr(llc, "TABLE_BYTES", 0)
  assert cli.main([*args, "--out", str(tmp_path / "steps")]) == 0
  a, b = (json.loads((tmp_path / name / "llc.json").read_text()) for name in ("table", "steps"))
  for x, y in zip(a["replicas"], b["replicas"]):
    assert y["init_loss"] == pytest.approx(x["init_loss"], rel=1e-5)
    assert y["llc_per_chain"] == pytest.approx(x["llc_per_chain"], rel=1e-3, abs=1e-3)
  # The run's gaussian and random-pixel replicas have inputs of their own: the table holds
  # them, not the shared images (it would equal the true-label replica's otherwise).
  assert len({round(r["init_loss"], 6) for r in a["replicas"]}) == len(a["replicas"])


def _entry(replica, corruption, wd, step, value, seed=0):
  return dict(replica=replica, kind="labels", corruption=corruption, seed=seed, step=step,
              llc=value, llc_std=0.0, llc_se=None, num_params=100, learning_rate=0.01,
              weight_decay=wd, augmentation="none", label_noise=corruption,
              llc_per_chain=[value], init_loss=0.01, mean_loss=0.02, diverged_chains=0,
              settled=True, drift=0.0)


def test_report_reads_a_weight_decay_grid_per_value_and_through_training():
  """Replicas that differ in weight decay are separate conditions (not pooled), each read
  against its own true labels; several steps give a table of the means at each step."""
  from zhang.analysis import llc as llc_report
  entries = []
  for step, scale in ((100, 10.0), (200, 1.0)):
    for r, (p, wd, seed, v) in enumerate([(0, 0.3, 0, 1), (0, 0.3, 1, 3), (1, 0.3, 0, 8),
                                          (0, 1.0, 0, 20), (1, 1.0, 0, 10)]):
      entries.append(_entry(r, p, wd, step, scale * v, seed))
  result = dict(settings=dict(model="m", dataset="d", step_size=1e-4, gamma=100.0,
                              nbeta=10.0, nbeta_rule="n", chains=1, draws=10, burnin=5,
                              batch_size=8, seed=0), replicas=entries)
  rows = llc_report.conditions([e for e in entries if e["step"] == 200])
  assert [(c["name"], c["replicas"], c["llc"]) for c in rows] == [
      ("true labels, wd 0.3", 2, 2.0), ("random labels, wd 0.3", 1, 8.0),
      ("true labels, wd 1", 1, 20.0), ("random labels, wd 1", 1, 10.0)]
  text = "\n".join(llc_report.report_lines(result))
  assert "lambda-hat (wd 0.3) grows with label corruption, from 2 at" in text
  assert "lambda-hat (wd 1) falls with label corruption, from 20 at" in text
  assert ("| step | true labels, wd 0.3 | random labels, wd 0.3 | true labels, wd 1 | "
          "random labels, wd 1 |") in text
  assert "| 100 | 20 | 80 | 200 | 100 |" in text and "| 200 | 2 | 8 | 20 | 10 |" in text
  # One weight decay: the names carry none.
  assert [c["name"] for c in llc_report.conditions(entries[:3])] == ["true labels",
                                                                     "random labels"]
