#!/usr/bin/env bash
# Accelerator check: throughput of the replica grid, a short Figure 1 run, the estimated
# wall time of the whole Figure 1b grid on CIFAR-10 and each row against its roofline, in 8
# minutes.
#
#   benchmarks/device_check.sh              # on a GPU machine: at most 8 minutes
#   benchmarks/device_check.sh --quick      # the same steps, tiny, on CPU (1.5 minutes, 2 cores)
#   benchmarks/device_check.sh --followup   # what the first check left unmeasured (below)
#
# For a machine where jax, flax, optax, orbax-checkpoint and chex are installed and nothing
# can be downloaded (the device tool's H200): from here, run benchmarks/fetch_wheels.sh once
# and carry benchmarks/wheels (and benchmarks/data for --followup); there, the command is
# this script, e.g.
#   run(command="benchmarks/device_check.sh", carry=["benchmarks/wheels"], timeout_s=540)
#   run(command="TOTAL_SECONDS=560 benchmarks/device_check.sh --followup",
#       carry=["benchmarks/wheels", "benchmarks/data"], timeout_s=600)
#
# --followup runs, in the same 8 minutes (TOTAL_SECONDS), what the first H200 check
# (2026-11-28, benchmarks/RESULTS.md) left unmeasured: alexnet_small at R = 64 under map and
# vmap (90 s), steps 7 and 9 below, then, optional, with all the time left, configs/fig1.py's
# grid of alexnet_small on all 60,000 Fashion-MNIST images (true and random labels, the
# three pixel kinds; 1 seed): fit_{summary.json,metrics.jsonl,config.json}. The estimates
# are then arithmetic on these rows and the first check's (benchmarks/estimate_fig1b.py).
#
# Steps, each under `timeout` (capped to what is left), the whole within TOTAL_SECONDS (480);
# the limits (seconds) are 60, 140, 80, 130, 20 + 10 and 30: 470, and 30-50 s of setup (on
# the H200, steps 1-5 took 357 s in all):
#   0. the backend (a full run refuses CPU); missing pure-Python dependencies installed from
#      wheels in shared/wheels/ or benchmarks/wheels/ (else from an index, if one answers)
#      into a scratch folder on PYTHONPATH, with the repository itself, so nothing is
#      pip-installed into the environment (an editable install would need setuptools from
#      an index for its build isolation);
#   1. benchmarks/throughput.py, mlp_1x512 at R = 1, 8, 64, 256 replicas;
#   2. benchmarks/throughput.py, inception_small at R = 1, 8, 64, map then vmap (6 rows;
#      --max_seconds skips, on stderr, those predicted to end past 115 s: on the H200 a
#      vmapped R = 64 compile alone took 60 s). Explicit gradients were as fast as JAX's on
#      the H200 (alexnet_small) and are no longer compared here; see benchmarks/RESULTS.md;
#   3. the same for alexnet_small at R = 1, 8, 64, within 65 s;
#   4. zhang train --config configs/fig1.py:model=inception_small,dataset=synthetic_cifar10
#      (18 replicas, 5,000 training images), 200 steps, evaluated every 100;
#   5. benchmarks/estimate_fig1b.py on the rows of steps 1-3: the whole Figure 1b grid on
#      CIFAR-10 (3 models x 11 corruption levels x 3 seeds) on this device, with the
#      steps-to-fit assumed below (FIT_STEPS), and step 4's model's evaluation cost measured
#      by that run (its summary.json's timing; the other models' assumed, 1/3). It is
#      given 20 s that the steps before it leave alone. Then the same with alexnet_small
#      and mlp_1x512 run to max_steps (fig1b_estimate_unfitted, 10 s): the case where
#      their label replicas never reach 100% train accuracy (benchmarks/RESULTS.md,
#      "Steps-to-fit at full size");
#   6. benchmarks/roofline.py on the same rows: each step's floor, from its FLOPs at the
#      same-process matmul rate and its unavoidable bytes at the same-process bandwidth
#      (the rows' memory_bytes_per_s), and how close the measured step is to it. Given 30 s
#      that the steps before it leave alone (it traces each model abstractly).
#   7-9, optional, with the time steps 1-6 leave unused (skipped, or failing, they do not
#      fail the check): 7. inception_small at R = 64, map, bfloat16 (45 s); 8. the two
#      estimates of step 5 with inception_small in bf16 (10 s each); 9. benchmarks/
#      profile_step.py: each step's op kinds and kernels by time, mlp_1x512 at R = 256
#      (30 s) and inception_small at R = 8, map (60 s).
# --quick runs the same with the defaults (one strategy): mlp_1x512 R = 1, 4;
# inception_small and alexnet_small R = 1 at batch 2; a 20-step MLP grid on 256 images;
# and for steps 7-9, mlp_1x512's bf16 row at R = 1 and profiles of mlp_1x512 at R = 2 and
# alexnet_small at R = 1, batch 2. --quick --followup: alexnet_small at R = 1 and a 20-step
# MLP grid on 256 Fashion-MNIST images.
# Writes under ${OUT:-results}/: throughput_{mlp_1x512,inception_small,alexnet_small}.jsonl
# (throughput.py's rows), fig1_summary.json, fig1_metrics.jsonl and fig1_config.json (the
# run's own files), fig1b_estimate.md and fig1b_estimate.json (the estimate and its
# arithmetic), fig1b_estimate_unfitted.{md,json} (its max_steps case), roofline.md and
# roofline.json (step 6), throughput_bf16.jsonl,
# fig1b_estimate{,_unfitted}_bf16.{md,json} and profile_{mlp,conv}.txt (steps 7-9),
# device_check.json (machine, per-step exit codes and seconds, the rows, the run's outcome,
# the estimates, the roofline and the profiles' headlines in short) and device_check.log
# (everything printed). Exits 0 when every required step (1-6) did, else 1; a step that
# fails or times out does not stop the next ones.
# PYTHON picks the interpreter (python3).
set -euo pipefail

quick=0 followup=0
for arg in "$@"; do
  case "$arg" in
    --quick|--cpu-smoke) quick=1 ;;
    --followup) followup=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_check.sh: unknown argument $arg (use --quick, --followup or --help)" >&2
       exit 2 ;;
  esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
PYTHON=${PYTHON:-python3}
out=${OUT:-results}
mkdir -p "$out"
out=$(cd "$out" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/zhang_device_check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
: > "$out/device_check.log"
exec > >(tee -a "$out/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
total=${TOTAL_SECONDS:-480}

now() { date +%s%N; }  # nanoseconds
left() { echo $(( total - ($(date +%s) - start) )); }

# ---------------------------------------------------------------------------- 0. setup

echo "== device_check: $(date -u +%FT%TZ), repo $repo, results in $out, quick=$quick," \
     "followup=$followup"
"$PYTHON" - "$scratch/env.json" <<'EOF'
import json, os, platform, shutil, subprocess, sys
import jax
env = dict(backend=jax.default_backend(), device_count=jax.device_count(),
           device_kind=jax.devices()[0].device_kind, jax_version=jax.__version__,
           python=platform.python_version(), python_executable=sys.executable,
           cpu_count=os.cpu_count())
if shutil.which("nvidia-smi"):
  q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                      "--format=csv,noheader"], capture_output=True, text=True)
  env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
json.dump(env, open(sys.argv[1], "w"))
print(json.dumps(env))
EOF
backend=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["backend"])' \
  "$scratch/env.json")
if [[ "$backend" == cpu && $quick == 0 ]]; then
  echo "device_check.sh: jax sees no accelerator (backend cpu); the full check is for a GPU" \
       "or TPU machine. On CPU run: benchmarks/device_check.sh --quick" >&2
  exit 2
fi

# Modules of the dependencies that a machine may lack and that install from pure wheels
# (module distribution); jax, flax, optax, orbax-checkpoint and chex must be there already.
missing=$("$PYTHON" - <<'EOF'
import importlib.util
need = {"ml_collections": "ml_collections", "tqdm": "tqdm", "etils": "etils",
        "absl": "absl_py", "yaml": "PyYAML"}
print(" ".join(d for m, d in need.items() if importlib.util.find_spec(m) is None))
EOF
)
site="$scratch/site"
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
# --followup's Fashion-MNIST: the IDX files that benchmarks/fetch_wheels.sh copies into
# benchmarks/data/fashion_mnist/ (carried with it), unless ZHANG_DATA_DIR says where.
if [[ -z "${ZHANG_DATA_DIR:-}" && -d benchmarks/data ]]; then
  export ZHANG_DATA_DIR="$repo/benchmarks/data"
fi
if [[ -n "$missing" ]]; then
  echo "== installing into $site: $missing"
  wheels=() from_index=()
  for dist in $missing; do
    found=""
    for dir in shared/wheels benchmarks/wheels; do
      for w in "$dir"/*.whl; do
        [[ -e "$w" ]] || continue
        # Wheel names spell the distribution with underscores; compare case-blind.
        name=$(basename "$w" | cut -d- -f1 | tr '[:upper:]' '[:lower:]')
        if [[ "$name" == "$(echo "$dist" | tr '[:upper:]-' '[:lower:]_')" ]]; then
          found=$w
          break 2
        fi
      done
    done
    if [[ -n "$found" ]]; then wheels+=("$found"); else from_index+=("$dist"); fi
  done
  pip_target=("$PYTHON" -m pip install -q --no-deps --no-compile --no-cache-dir
              --disable-pip-version-check --target "$site")
  if (( ${#wheels[@]} )); then
    "${pip_target[@]}" --no-index "${wheels[@]}"
  fi
  if (( ${#from_index[@]} )); then
    echo "== no wheel for ${from_index[*]} in shared/wheels or benchmarks/wheels" \
         "(benchmarks/fetch_wheels.sh makes them); trying an index"
    timeout 60 "${pip_target[@]}" "${from_index[@]}" \
      || echo "device_check.sh: could not install ${from_index[*]}" >&2
  fi
fi
if ! "$PYTHON" -c 'import zhang.train, zhang.cli, zhang.data' 2>"$scratch/import.err"; then
  cat "$scratch/import.err" >&2
  echo "device_check.sh: the package does not import (above); carry the missing wheels:" \
       "benchmarks/fetch_wheels.sh here, then carry=[\"benchmarks/wheels\"]" >&2
  exit 1
fi

# ---------------------------------------------------------------------------- steps

: > "$scratch/steps.tsv"
# Files of an earlier check in the same folder would pass for this one's (a skipped step
# writes none): the estimate, above all, must read only this machine's rows.
rm -f "$out"/throughput_{mlp_1x512,inception_small,alexnet_small}.jsonl \
  "$out"/fig1_{summary.json,metrics.jsonl,config.json} "$out"/fig1b_estimate.{md,json} \
  "$out"/fig1b_estimate_unfitted.{md,json} "$out"/roofline.{md,json} "$out/device_check.json" \
  "$out"/throughput_bf16.jsonl "$out"/fig1b_estimate{,_unfitted}_bf16.{md,json} \
  "$out"/profile_{mlp,conv}.txt "$out"/fit_{summary.json,metrics.jsonl,config.json}
# run_step NAME LIMIT STDOUT_FILE|- COMMAND...: runs under timeout (capped to the seconds
# left of the total, less $reserve kept for the steps after it), records "name rc seconds
# limit"; never stops the script.
reserve=0
optional=0  # 1: the steps after the required ones, run with the time those leave unused
run_step() {
  local name=$1 limit=$2 dest=$3 rc=0 t0 t1  # t0, t1 in ns; steps.tsv holds ms
  shift 3
  local remaining
  remaining=$(( $(left) - reserve ))
  (( limit > remaining - 15 )) && limit=$(( remaining - 15 ))
  if (( limit < 10 )); then
    echo "== $name: skipped, $remaining s left of $total (less $reserve s reserved)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" skipped 0 "$limit" "$optional" \
      >> "$scratch/steps.tsv"
    return 0
  fi
  echo "== $name (limit ${limit} s): $*"
  t0=$(now)
  if [[ "$dest" == - ]]; then
    timeout -k 10 "$limit" "$@" || rc=$?
  else
    timeout -k 10 "$limit" "$@" > "$dest" || rc=$?
    cat "$dest"
  fi
  t1=$(now)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" $(( (t1 - t0) / 1000000 )) "$limit" \
    "$optional" >> "$scratch/steps.tsv"
  echo "== $name: exit $rc"
}

tp=("$PYTHON" benchmarks/throughput.py)
tiny=(--steps 1 --repeats 1 --n_train 256 --batch_size 4 --matmul_n 256 --quick)  # --quick
fig1_arg="" fig1_set=()  # step 4's run (none with --followup)

# train_run STEP LIMIT PREFIX ARG [FLAG...]: zhang train --config configs/fig1.py:ARG as step
# STEP; its summary.json (rewritten after every evaluation: a run cut short still leaves
# one), metrics.jsonl and config.json are copied to $out/PREFIX_*.
train_run() {
  local name=$1 limit=$2 prefix=$3 arg=$4 dir="$scratch/$3"
  shift 4
  run_step "$name" "$limit" - "$PYTHON" -m zhang train --config "configs/fig1.py:$arg" \
    --workdir "$dir" --no_progress --restart "$@"
  for f in summary.json metrics.jsonl config.json; do
    if [[ -f "$dir/$f" ]]; then cp "$dir/$f" "$out/${prefix}_$f"; fi
  done
}

# Steps 7 and 9, also the core of --followup:
# 7. inception_small at R = 64, map, in bfloat16: the row the estimate lacked (map was 1.37x
#    vmap in fp32, and bf16 1.52x fp32 under vmap); --quick: mlp_1x512 at R = 1;
# 9. profiles of two steps, their op kinds and kernels by time: mlp_1x512 at R = 256 (is its
#    SGD-momentum update one fused pass on the GPU?) and inception_small at R = 8, map
#    (where do its 0.11 of the matmul rate go?); --quick: mlp_1x512 at R = 2 and
#    alexnet_small at R = 1.
bf16_row() {
  if (( quick )); then
    bf16_model=mlp_1x512
    run_step throughput_bf16 60 "$out/throughput_bf16.jsonl" "${tp[@]}" --models mlp_1x512 \
      --replicas 1 "${tiny[@]}" --compute_dtype bfloat16
  else
    bf16_model=inception_small
    run_step throughput_bf16 45 "$out/throughput_bf16.jsonl" "${tp[@]}" \
      --models inception_small --replicas 64 --strategy map --compute_dtype bfloat16 \
      --matmul_n 8192
  fi
}
profiles() {
  local mlp conv
  if (( quick )); then
    mlp=(--model mlp_1x512 --replicas 2 --batch_size 4 --steps 1 --input_shape 8,8,1)
    conv=(--model alexnet_small --replicas 1 --batch_size 2 --steps 1)
  else
    mlp=(--model mlp_1x512 --replicas 256 --batch_size 128 --steps 10)
    conv=(--model inception_small --replicas 8 --batch_size 128 --steps 2 --strategy map
          --top 20)
  fi
  run_step profile_mlp 30 "$out/profile_mlp.txt" "$PYTHON" benchmarks/profile_step.py \
    "${mlp[@]}"
  run_step profile_conv 60 "$out/profile_conv.txt" "$PYTHON" benchmarks/profile_step.py \
    "${conv[@]}"
}

if (( followup )); then
  # ------------------------------------------------------------------------ --followup
  # What the first H200 check (2026-11-28) left unmeasured: alexnet_small at R = 64 under map
  # and vmap (its map rows did not fit that check's budget), step 7's bf16 row, step 9's
  # profiles, then, with all the time left (optional), configs/fig1.py's grid of
  # alexnet_small on all of Fashion-MNIST (60,000 images; true and random labels and the
  # three pixel kinds, 1 seed): do a conv net's random labels reach 100% train accuracy
  # under the paper's schedule at full size? Its files: fit_{summary.json,metrics.jsonl,
  # config.json}. The estimates are arithmetic: run benchmarks/estimate_fig1b.py afterwards
  # on these rows and the first check's (benchmarks/results/h200_2026-11-28/).
  if (( quick )); then
    run_step throughput_alexnet_small 60 "$out/throughput_alexnet_small.jsonl" "${tp[@]}" \
      --models alexnet_small --replicas 1 "${tiny[@]}" --batch_size 2 --strategy map,vmap
    fit_arg="model=mlp_1x512,dataset=fashion_mnist,levels=2,seeds=1,n_train=256"
    fit_set=(--max_steps 20 --set eval_every=10 --set n_test=128 --set batch_size=32
             --set eval_batch_size=128)
  else
    run_step throughput_alexnet_small 90 "$out/throughput_alexnet_small.jsonl" "${tp[@]}" \
      --models alexnet_small --replicas 64 --strategy map,vmap --matmul_n 8192
    fit_arg="model=alexnet_small,dataset=fashion_mnist,levels=2,seeds=1"
    fit_set=()
  fi
  bf16_row
  profiles
  optional=1
  train_run fit_fashion_mnist "$total" fit "$fit_arg" "${fit_set[@]}"
  optional=0
else
  reserve=75  # for steps 5 and 6, the estimates and the roofline (run_step keeps 15 more)
  if (( quick )); then
    run_step throughput_mlp_1x512 60 "$out/throughput_mlp_1x512.jsonl" "${tp[@]}" \
      --models mlp_1x512 --replicas 1,4 "${tiny[@]}" --max_seconds 45
    # One compile of the Inception step is most of this (about 10 s on 2 CPU cores).
    run_step throughput_inception_small 90 "$out/throughput_inception_small.jsonl" "${tp[@]}" \
      --models inception_small --replicas 1 "${tiny[@]}" --batch_size 2 --max_seconds 30
    run_step throughput_alexnet_small 60 "$out/throughput_alexnet_small.jsonl" "${tp[@]}" \
      --models alexnet_small --replicas 1 "${tiny[@]}" --batch_size 2 --max_seconds 20
    fig1_arg="model=mlp_1x512,dataset=synthetic_cifar10,levels=2,seeds=1,n_train=256"
    fig1_set=(--max_steps 20 --set eval_every=10 --set n_test=128 --set batch_size=32
              --set eval_batch_size=128)
    fig1_limit=90
  else
    # The reference matmul is 8192^3: a 2048^3 one takes tens of microseconds on an H200.
    run_step throughput_mlp_1x512 60 "$out/throughput_mlp_1x512.jsonl" "${tp[@]}" \
      --models mlp_1x512 --replicas 1,8,64,256 --matmul_n 8192 --max_seconds 45
    # Strategies and convolution gradients compared (rows carry strategy and conv_gradient);
    # the estimate takes the fastest variant measured at R >= 33 (here 64).
    run_step throughput_inception_small 140 "$out/throughput_inception_small.jsonl" \
      "${tp[@]}" --models inception_small --replicas 1,8,64 --strategy map,vmap \
      --matmul_n 8192 --max_seconds 115
    run_step throughput_alexnet_small 80 "$out/throughput_alexnet_small.jsonl" "${tp[@]}" \
      --models alexnet_small --replicas 1,8,64 --strategy map,vmap --matmul_n 8192 \
      --max_seconds 65
    fig1_arg="model=inception_small,dataset=synthetic_cifar10,n_train=5000"
    fig1_set=(--max_steps 200 --set eval_every=100 --set n_test=1000
              --set checkpoint_every=1000)
    fig1_limit=130
  fi
  train_run fig1_synthetic_cifar10 "$fig1_limit" fig1 "$fig1_arg" "${fig1_set[@]}"

  # Steps until each model's slowest replica (random labels) fits CIFAR-10, assumed here until
  # a real run's summary.json measures them (estimate_fig1b.py --fit_from):
  #   inception_small 16,600: PAPER.md (../shared/PAPER.md, Figure 1a, public reproductions):
  #     random labels reach loss <= 0.1 at 16.6k steps, true labels at 4.0k (4.15x, the top of
  #     Figure 1b's 1x-4x axis);
  #   alexnet_small, mlp_1x512 16,000: no published step counts. Figure 1b puts random labels
  #     at up to about 4x the true-label time for all three models; the true-label time is
  #     taken as Inception's 4.0k, so 4 x 4.0k. (Table 1 has AlexNet and MLP 1x512 at 99.82%
  #     and 99.34% train accuracy on random labels: with fit_threshold 1.0 those replicas may
  #     not fit at all, and the grid would run to max_steps.)
  FIT_STEPS=inception_small=16600,alexnet_small=16000,mlp_1x512=16000
  FIT_SOURCE="inception_small: PAPER.md's reproduction (random labels, loss <= 0.1 at 16.6k \
steps); alexnet_small and mlp_1x512: 4 x Inception's 4.0k true-label steps (Figure 1b: random \
labels take up to about 4x as long)"
  # The step-4 run's summary.json times its train chunks and evaluations: its model's
  # evaluation cost (per image, in training examples) is then measured on this device, not
  # assumed (1/3), when both were timed past their first, compiling calls.
  eval_cost_from=()
  if "$PYTHON" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])).get("timing", {}).get(
      "eval_cost") is None)' "$out/fig1_summary.json" 2>/dev/null; then
    eval_cost_from=(--eval_cost_from "$out/fig1_summary.json")
  fi
  reserve=40
  run_step fig1b_estimate 20 "$out/fig1b_estimate.md" "$PYTHON" benchmarks/estimate_fig1b.py \
    "$out"/throughput_{mlp_1x512,inception_small,alexnet_small}.jsonl --fit_steps "$FIT_STEPS" \
    --fit_source "$FIT_SOURCE" "${eval_cost_from[@]}" --json "$out/fig1b_estimate.json"
  # The same rows if AlexNet's and the MLP's label replicas never fit: Table 1 has them at
  # 99.82% and 99.34% train accuracy on random labels, and on all of Fashion-MNIST no MLP label
  # replica fit in 60,000 steps. Those grids then run to configs/fig1.py's max_steps.
  UNFITTED_STEPS=inception_small=16600,alexnet_small=60000,mlp_1x512=60000
  reserve=30
  run_step fig1b_estimate_unfitted 10 "$out/fig1b_estimate_unfitted.md" "$PYTHON" \
    benchmarks/estimate_fig1b.py \
    "$out"/throughput_{mlp_1x512,inception_small,alexnet_small}.jsonl \
    --fit_steps "$UNFITTED_STEPS" \
    --fit_source "inception_small as above; alexnet_small and mlp_1x512 never fit and run to \
max_steps (benchmarks/RESULTS.md, Steps-to-fit at full size)" "${eval_cost_from[@]}" \
    --json "$out/fig1b_estimate_unfitted.json"
  reserve=0
  rows=()
  for f in "$out"/throughput_{mlp_1x512,inception_small,alexnet_small}.jsonl; do
    if [[ -s "$f" ]]; then rows+=("$f"); fi
  done
  if (( ${#rows[@]} )); then
    run_step roofline 30 "$out/roofline.md" "$PYTHON" benchmarks/roofline.py "${rows[@]}" \
      --json "$out/roofline.json"
  else
    echo "== roofline: skipped, no throughput rows"
    printf '%s\t%s\t%s\t%s\t%s\n' roofline skipped 0 30 0 >> "$scratch/steps.tsv"
  fi

  # 7-9, optional, with the time the steps above leave (on the H200 on 2026-11-28, steps 1-5
  # took 357 s: with the setup and step 6, perhaps 60 s are left; TOTAL_SECONDS=540 gives
  # these steps all their limits). 8: the two estimates again with step 7's model in bf16
  # (--compute_dtype MODEL=bfloat16).
  optional=1
  bf16_row
  if [[ -s "$out/throughput_bf16.jsonl" ]]; then
    bf16_rows=("$out"/throughput_{mlp_1x512,inception_small,alexnet_small,bf16}.jsonl)
    run_step fig1b_estimate_bf16 10 "$out/fig1b_estimate_bf16.md" "$PYTHON" \
      benchmarks/estimate_fig1b.py "${bf16_rows[@]}" --fit_steps "$FIT_STEPS" \
      --fit_source "$FIT_SOURCE" "${eval_cost_from[@]}" \
      --compute_dtype "$bf16_model=bfloat16" --json "$out/fig1b_estimate_bf16.json"
    run_step fig1b_estimate_unfitted_bf16 10 "$out/fig1b_estimate_unfitted_bf16.md" \
      "$PYTHON" benchmarks/estimate_fig1b.py "${bf16_rows[@]}" --fit_steps "$UNFITTED_STEPS" \
      --fit_source "as fig1b_estimate_unfitted.md" "${eval_cost_from[@]}" \
      --compute_dtype "$bf16_model=bfloat16" --json "$out/fig1b_estimate_unfitted_bf16.json"
  fi
  profiles
  optional=0
fi

# ---------------------------------------------------------------------------- summary

"$PYTHON" - "$scratch/env.json" "$scratch/steps.tsv" "$out" "$quick" "$start" \
  "$fig1_arg ${fig1_set[*]}" "$followup" "${fit_arg:-} ${fit_set[*]:-}" <<'EOF'
import json, pathlib, sys, time
env_file, steps_file, out, quick, start, fig1_command, followup, fit_command = sys.argv[1:]
out = pathlib.Path(out)
steps = {}
for line in open(steps_file):
  name, rc, seconds, limit, optional = line.rstrip("\n").split("\t")
  steps[name] = dict(rc=None if rc == "skipped" else int(rc), skipped=rc == "skipped",
                     seconds=round(int(seconds) / 1000, 1), limit_s=int(limit),
                     optional=optional == "1")

def rows(path):
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.startswith("{")]

keep = ("model", "strategy", "conv_gradient", "compute_dtype", "replicas", "batch_size",
        "step_ms",
        "compile_s", "examples_per_s", "flops_per_s", "needed_flops_per_s",
        "fraction_of_matmul", "needed_fraction_of_matmul", "matmul_flops_per_s")
throughput = [{k: r.get(k) for k in keep}
              for f in ("throughput_mlp_1x512.jsonl", "throughput_inception_small.jsonl",
                        "throughput_alexnet_small.jsonl", "throughput_bf16.jsonl")
              for r in rows(out / f)]
def run(summary_file, command):
  """A zhang train run's outcome in short, from its summary.json (None if it wrote none)."""
  if not summary_file.exists():
    return None
  s = json.loads(summary_file.read_text())
  return dict(config=f"configs/fig1.py:{command.strip()}", status=s.get("status"),
              steps_run=s.get("steps_run"), wall_seconds=s.get("wall_seconds"),
              timing=s.get("timing"),
              replicas=[{k: r.get(k) for k in ("kind", "corruption", "seed", "fit_step",
                                                "final_train_acc", "final_test_acc")}
                        for r in s.get("replicas", [])])

fig1 = run(out / "fig1_summary.json", fig1_command)
fit = run(out / "fit_summary.json", fit_command)  # --followup's Fashion-MNIST grid
estimate = None
estimate_file = out / "fig1b_estimate.json"
if estimate_file.exists():
  e = json.loads(estimate_file.read_text())
  estimate = dict({k: e[k] for k in ("device_kind", "total_seconds", "total_hours",
                                     "budget_hours", "under_budget", "lower_bound",
                                     "extrapolated", "batch_scaled")},
                  models={m["model"]: dict(seconds=m["seconds"], step_ms=m["step_ms"],
                                           steps=m["steps"], row_replicas=m["step"][
                                               "row_replicas"],
                                           strategy=m["step"]["strategy"],
                                           conv_gradient=m["step"]["conv_gradient"],
                                           eval_cost=m["eval_cost"],
                                           eval_cost_measured=m["eval_cost_measured"])
                          for m in e["models"]},
                  files=["fig1b_estimate.md", "fig1b_estimate.json"])
unfitted_file = out / "fig1b_estimate_unfitted.json"
if estimate and unfitted_file.exists():
  u = json.loads(unfitted_file.read_text())
  estimate["if_alexnet_and_mlp_never_fit"] = {
      k: u[k] for k in ("total_seconds", "total_hours", "under_budget")}
  estimate["files"] += ["fig1b_estimate_unfitted.md", "fig1b_estimate_unfitted.json"]
# Steps 7-8: the estimates with one model (inception_small; --quick: mlp_1x512) in bf16.
for name, key in (("fig1b_estimate_bf16", "with_bf16"),
                  ("fig1b_estimate_unfitted_bf16", "with_bf16_if_never_fit")):
  if estimate and (out / f"{name}.json").exists():
    b = json.loads((out / f"{name}.json").read_text())
    low = [m["model"] for m in b["models"] if m["step"]["compute_dtype"] == "bfloat16"]
    estimate[key] = dict({k: b[k] for k in ("total_seconds", "total_hours", "under_budget")},
                         bf16_models=low)
    estimate["files"] += [f"{name}.md", f"{name}.json"]
profiles = {}
for name in ("profile_mlp", "profile_conv"):
  f = out / f"{name}.txt"
  if f.exists() and f.stat().st_size:
    profiles[name] = dict(file=f.name, headline=f.read_text().splitlines()[0])
roofline = None
roofline_file = out / "roofline.json"
if roofline_file.exists():
  roofline = [{k: r.get(k) for k in ("model", "strategy", "compute_dtype", "replicas",
                                     "step_ms", "floor_ms", "bound", "of_floor",
                                     "best_fraction", "fraction_of_matmul",
                                     "bandwidth_bytes_per_s", "bandwidth_measured")}
              for r in json.loads(roofline_file.read_text())]
# ok: every required step ran and exited 0; the optional ones (7-9) may be skipped or fail.
result = dict(env=json.load(open(env_file)), quick=quick == "1", followup=followup == "1",
              steps=steps, throughput=throughput, fig1=fig1, fit=fit,
              fig1b_estimate=estimate, roofline=roofline,
              profiles=profiles, total_seconds=round(time.time() - int(start), 1),
              ok=all(v["rc"] == 0 for v in steps.values() if not v["optional"]))
(out / "device_check.json").write_text(json.dumps(result, indent=1) + "\n")

e = result["env"]
print(f"\n== device_check summary: {e['backend']} ({e['device_kind']} x{e['device_count']}), "
      f"jax {e['jax_version']}, {result['total_seconds']:.0f} s in all")
for name, v in steps.items():
  state = "skipped" if v["skipped"] else f"exit {v['rc']}"
  print(f"  {name:<30} {state:<8} {v['seconds']:>7.1f} s (limit {v['limit_s']} s)"
        f"{', optional' if v['optional'] else ''}")
print(f"  {'model':<16} {'variant':<20} {'R':>4} {'step ms':>9} {'compile s':>9} "
      f"{'ex/s':>11} {'TF/s':>7} {'x matmul':>8}")
for r in throughput:
  dtype = "" if (r["compute_dtype"] or "float32") == "float32" else "/bf16"
  variant = f"{r['strategy']}/{r['conv_gradient'] or '-'}{dtype}"
  print(f"  {r['model']:<16} {variant:<20} {r['replicas']:>4} {r['step_ms']:>9.2f} "
        f"{r['compile_s']:>9.1f} {r['examples_per_s']:>11,.0f} "
        f"{r['flops_per_s'] / 1e12:>7.2f} {r['fraction_of_matmul']:>8.3f}")
for name, r_ in (("fig1", fig1), ("fit", fit)):
  if r_ is None:
    if (name == "fit") == result["followup"]:
      print(f"  {name}: no summary.json")
    continue
  print(f"  {name}: {r_['config']}: status {r_['status']}, {r_['steps_run']} steps, "
        f"{r_['wall_seconds']:.0f} s, {len(r_['replicas'])} replicas")
  t = r_["timing"] or {}
  if t.get("eval_cost") is not None:
    print(f"    timing: {t['train_ms_per_step']:.2f} ms per step, {t['eval_seconds_each']:.2f} s "
          f"per evaluation of {t['eval_images']:,} images: eval cost {t['eval_cost']:.3f} "
          f"training examples per image")
  for r in r_["replicas"]:
    fitted = f"fit at step {r['fit_step']}" if r["fit_step"] is not None else "not fitted"
    print(f"    {r['kind']:<16} p={r['corruption']:.2f} seed {r['seed']} "
          f"train {r['final_train_acc']:.4f} test {r['final_test_acc']:.3f}, {fitted}")
if estimate:
  bound = ">= " if estimate["lower_bound"] else ""
  verdict = {True: "under", False: "over", None: "not shown under"}[estimate["under_budget"]]
  flags = [f for f in ("extrapolated", "batch_scaled") if estimate[f]]
  print(f"  fig1b estimate (CIFAR-10, 3 models x 33 replicas): {bound}"
        f"{estimate['total_seconds']:,.0f} s = {bound}{estimate['total_hours']:.2f} h, "
        f"{verdict} {estimate['budget_hours']:g} h{' (' + ', '.join(flags) + ')' if flags else ''}"
        f"; fig1b_estimate.md")
  for name, m in estimate["models"].items():
    cost = f"eval cost {m['eval_cost']:.3f} {'measured' if m['eval_cost_measured'] else 'assumed'}"
    print(f"    {name:<16} {m['seconds']:>9,.0f} s: {m['steps']:,} steps x {m['step_ms']:,.2f} ms "
          f"(R = {m['row_replicas']} row, {m['strategy']}/{m['conv_gradient']}; {cost})")
  never = estimate.get("if_alexnet_and_mlp_never_fit")
  if never:
    print(f"    if alexnet_small and mlp_1x512 never fit (run to max_steps): "
          f"{never['total_seconds']:,.0f} s = {never['total_hours']:.2f} h; "
          f"fig1b_estimate_unfitted.md")
  for key, what, f in (("with_bf16", "with {} in bf16", "fig1b_estimate_bf16.md"),
                       ("with_bf16_if_never_fit", "with {} in bf16, if they never fit",
                        "fig1b_estimate_unfitted_bf16.md")):
    if estimate.get(key):
      e = estimate[key]
      print(f"    {what.format(', '.join(e['bf16_models']))}: {e['total_seconds']:,.0f} s = "
            f"{e['total_hours']:.2f} h; {f}")
elif not result["followup"]:
  print("  fig1b estimate: none (see fig1b_estimate step)")
if roofline:
  print(f"  roofline (roofline.md): {'model':<16} {'variant':<14} {'R':>4} {'bound':<8} "
        f"{'floor ms':>9} {'of floor':>8} {'best':>5}")
  for r in roofline:
    variant = f"{r['strategy']}/{r['compute_dtype']}"
    print(f"  {'':<24}{r['model']:<16} {variant:<14} {r['replicas']:>4} {r['bound']:<8} "
          f"{r['floor_ms']:>9.3f} {r['of_floor']:>8.3f} {r['best_fraction']:>5.2f}")
elif not result["followup"]:
  print("  roofline: none (see roofline step)")
for name, v in profiles.items():
  print(f"  {name}: {v['headline']} ({v['file']})")
if not profiles:
  print("  profiles: none")
print(f"  results: {out}")
EOF
ok=$("$PYTHON" -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["ok"]))' \
  "$out/device_check.json")
[[ "$ok" == 1 ]]
