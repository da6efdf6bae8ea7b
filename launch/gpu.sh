#!/usr/bin/env bash
# Train a zhang config on one GPU machine, this one or another over ssh. See -h.
set -euo pipefail

PROG=gpu.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [--host [USER@]HOST [--attach | --stop]] [options] [-- ARGS...]

Train on one machine with one or more NVIDIA GPUs (one process sees all of them; the
replica grid is sharded over them).

Here (no --host), from the repository root:
  1. create the venv (skipped if it exists),
  2. pip install -e . "jax[cuda12]" (-e ".[gcs]" when the workdir or data dir is gs://;
     skipped if the installed `zhang` command is newer than pyproject.toml; --jax none
     keeps a preinstalled jax),
  3. env XLA_CLIENT_MEM_FRACTION=0.9 python -m zhang train --config CONFIG --workdir WORKDIR ...
With --host, over ssh:
  1. copy a `git archive` tarball of HEAD to the host and unpack it in ~/zhang, keeping
     a relative workdir there (skipped while a run is going there),
  2. create ~/zhang-venv (once; Python >= 3.11) and pip install -e ~/zhang "jax[cuda12]"
     (~/zhang[gcs] for gs://),
  3. start the same train command in ~/zhang, detached (it outlives ssh; output in
     ~/zhang-run/train.log there), unless a run is going there, and follow its log
     until it ends (Ctrl-C leaves the run going),
  4. copy config.json, metrics.jsonl and summary.json back to --results.
A rerun of the same command resumes from the workdir's checkpoint, or, while the run is
still going, follows it.

Options (paths are relative to the repository root, or to ~/zhang on the host):
  --host [USER@]HOST    run there over ssh (keys must already work: ssh HOST true)
  --config CONFIG       config file, with :args (default configs/fig1.py)
  --workdir DIR         run directory (default runs/fig1; gs:// ok)
  --set FIELD=VALUE     config override (repeatable)
  --data-dir DIR        tfds data_dir for cifar10/cifar100 (TFDS_DATA_DIR; gs:// ok)
  --gpus LIST           CUDA_VISIBLE_DEVICES, e.g. 0 or 0,1 (default: all GPUs)
  --mem-fraction F      XLA_CLIENT_MEM_FRACTION, the share of GPU memory JAX preallocates
                        (default 0.9; JAX's own default is 0.75); the older name,
                        XLA_PYTHON_CLIENT_MEM_FRACTION, is unset (jaxlib refuses both)
  --jax SPEC            the jax to install (default "jax[cuda12]"; "none": use the jax already
                        installed in the system Python, through --system-site-packages)
  --venv DIR            virtual environment (default .venv here, ~/zhang-venv on the host)
  --python PYTHON       interpreter that creates the venv here (default python3; >= 3.11)
  --results DIR         with --host: local folder for the fetched files (default WORKDIR)
  --skip-setup          with --host: do not copy the code or install (already done)
  --attach              with --host: only follow the run's log until it ends, then fetch
  --stop                with --host: only SIGTERM the run and wait (it saves and exits)
  --reinstall           here: pip install even if the package looks installed
  --dry-run             print the commands, one per line, and run none of them
  -h, --help            this message
  -- ARGS...            extra arguments for zhang train (e.g. --restart)
EOF
}

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HOST="" CONFIG="configs/fig1.py" WORKDIR="runs/fig1" DATA_DIR="" GPUS="" MEM_FRACTION="0.9"
JAX="jax[cuda12]" VENV="" PYTHON="python3" RESULTS="" SKIP_SETUP=0 REINSTALL=0 DRY_RUN=0 ONLY=""
SETS=() EXTRA=()

while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h|--help) usage; exit 0 ;;
    --host) need "$@"; HOST=$2; shift 2 ;;
    --config) need "$@"; CONFIG=$2; shift 2 ;;
    --workdir) need "$@"; WORKDIR=${2%/}; shift 2 ;;
    --set) need "$@"; SETS+=("$2"); shift 2 ;;
    --data-dir) need "$@"; DATA_DIR=$2; shift 2 ;;
    --gpus) need "$@"; GPUS=$2; shift 2 ;;
    --mem-fraction) need "$@"; MEM_FRACTION=$2; shift 2 ;;
    --jax) need "$@"; JAX=$2; shift 2 ;;
    --venv) need "$@"; VENV=${2%/}; shift 2 ;;
    --python) need "$@"; PYTHON=$2; shift 2 ;;
    --results) need "$@"; RESULTS=$2; shift 2 ;;
    --skip-setup) SKIP_SETUP=1; shift ;;
    --reinstall) REINSTALL=1; shift ;;
    --attach|--stop)
      [[ -z $ONLY || $ONLY == "$1" ]] || die "--attach and --stop exclude each other"
      ONLY=$1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $1 (see -h)" ;;
    *) die "unexpected argument $1 (see -h)" ;;
  esac
done
[[ $MEM_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--mem-fraction $MEM_FRACTION: need a number in (0, 1]"
[[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus $GPUS: need indices like 0 or 0,1"
[[ $HOST != -* ]] || die "--host $HOST: not a host name"
[[ -z $ONLY || -n $HOST ]] || die "$ONLY needs --host (a run here is in this terminal)"

venv_flags=()
[[ $JAX != none ]] || venv_flags=(--system-site-packages)
# XLA_CLIENT_MEM_FRACTION replaces XLA_PYTHON_CLIENT_MEM_FRACTION; jaxlib refuses both set.
envs=(-u XLA_PYTHON_CLIENT_MEM_FRACTION XLA_CLIENT_MEM_FRACTION="$MEM_FRACTION")
[[ -z $GPUS ]] || envs+=(CUDA_VISIBLE_DEVICES="$GPUS")
[[ -z $DATA_DIR ]] || envs+=(TFDS_DATA_DIR="$DATA_DIR")
args=(-m zhang train --config "$CONFIG" --workdir "$WORKDIR")
for s in "${SETS[@]+"${SETS[@]}"}"; do args+=(--set "$s"); done
args+=("${EXTRA[@]+"${EXTRA[@]}"}")
GCS=0  # gs:// paths need the gcs extra (gcsfs)
[[ $WORKDIR != gs://* && $DATA_DIR != gs://* ]] || GCS=1

if [[ -z $HOST ]]; then
  [[ -n $VENV ]] || VENV=.venv
  pkg=.; ((!GCS)) || pkg=".[gcs]"
  install=("$VENV/bin/pip" install -q -e "$pkg")
  [[ $JAX == none ]] || install+=("$JAX")
  run cd "$REPO"
  cd "$REPO"  # the checks below look at the repository's files, in a dry run too
  [[ -x $VENV/bin/python ]] || run "$PYTHON" -m venv "${venv_flags[@]+"${venv_flags[@]}"}" "$VENV"
  if ((REINSTALL)) || [[ ! -x $VENV/bin/zhang || pyproject.toml -nt $VENV/bin/zhang ]] \
      || { ((GCS)) && ! compgen -G "$VENV/lib/python3*/site-packages/gcsfs" >/dev/null; }; then
    run "${install[@]}"
  fi
  run env "${envs[@]}" "$VENV/bin/python" "${args[@]}"
  exit 0
fi

# --- over ssh ----------------------------------------------------------------------------------
case $VENV in
  "") V='~/zhang-venv' ;;
  "~/"*) V="~/$(q "${VENV#"~/"}")" ;;
  *) V=$(q "$VENV") ;;
esac
TARBALL="${TMPDIR:-/tmp}/zhang-gpu.tar.gz"
uv_flags=""; [[ $JAX != none ]] || uv_flags=" --system-site-packages"
VENV_SETUP="if [ ! -x $V/bin/pip ]; then py=; for p in python3.13 python3.12 python3.11 python3; do if command -v \$p >/dev/null && \$p -c \"import sys; sys.exit(sys.version_info < (3, 11))\" && \$p -m venv${venv_flags[*]:+ ${venv_flags[*]}} $V; then py=\$p; break; fi; rm -rf $V; done; if [ -z \"\$py\" ]; then curl -LsSf https://astral.sh/uv/install.sh | sh && ~/.local/bin/uv venv -q --seed$uv_flags --python 3.12 $V; fi; fi"
src="~/zhang"; ((!GCS)) || src="~/'zhang[gcs]'"
PIP="$V/bin/pip install -q -U -e $src"
[[ $JAX == none ]] || PIP+=" $(q "$JAX")"
# Fresh code in ~/zhang, but a relative workdir there (and runs/) is kept: a rerun resumes it.
keep=runs; [[ $WORKDIR == /* || $WORKDIR == gs://* ]] || keep=${WORKDIR%%/*}
CLEAN="mkdir -p ~/zhang; find ~/zhang -mindepth 1 -maxdepth 1 ! -name runs ! -name $(q "$keep") -exec rm -rf {} +"
REMOTE_SETUP="$REMOTE_IDLE; set -e; $CLEAN; tar -xzf ~/zhang.tar.gz -C ~/zhang; $VENV_SETUP; $V/bin/pip install -q -U pip; $PIP"

TRAIN="env"
for e in "${envs[@]}"; do TRAIN+=" $(q "$e")"; done
TRAIN+=" $V/bin/python"
for a in "${args[@]}"; do TRAIN+=" $(q "$a")"; done

if [[ $ONLY == --stop ]]; then
  run ssh "$HOST" "$REMOTE_STOP"
  exit 0
fi
if [[ -z $ONLY ]] && ((!SKIP_SETUP)); then
  if [[ -e $REPO/.git ]]; then
    run git -C "$REPO" archive --format=tar.gz -o "$TARBALL" HEAD
  else  # not a git checkout: pack the folder, without local state
    run tar -C "$REPO" --exclude=./.venv --exclude=./runs --exclude='*.egg-info' \
      --exclude=__pycache__ -czf "$TARBALL" .
  fi
  run scp -q "$TARBALL" "$HOST:zhang.tar.gz"
  run ssh "$HOST" "$REMOTE_SETUP"
fi
[[ -n $ONLY ]] || run ssh "$HOST" "$(remote_start "$TRAIN")"
run ssh "$HOST" "$REMOTE_ATTACH"
if [[ $WORKDIR == gs://* ]]; then
  ((DRY_RUN)) || printf '%s: results in %s\n' "$PROG" "$WORKDIR" >&2
  exit 0
fi
[[ $WORKDIR == /* ]] && remote=$WORKDIR || remote="zhang/$WORKDIR"
[[ $WORKDIR == /* ]] && default_results="$REPO/runs/${WORKDIR##*/}" || default_results="$REPO/$WORKDIR"
[[ -n $RESULTS ]] || RESULTS=$default_results
run mkdir -p "$RESULTS"
run scp -q "$HOST:$remote/config.json" "$HOST:$remote/metrics.jsonl" "$HOST:$remote/summary.json" \
  "$RESULTS/"
