#!/usr/bin/env bash
# Train a zhang config on this machine's CPU: venv, install, run. See -h.
set -euo pipefail

PROG=local.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/local.sh [options] [-- ARGS...]

Train on this machine's CPU, from the repository root:
  1. create the venv (skipped if it exists),
  2. pip install -e . (-e ".[gcs]" for a gs:// workdir or data dir; skipped if the installed
     `zhang` command is newer than pyproject.toml),
  3. python -m zhang train --config CONFIG --workdir WORKDIR [--set ...] [ARGS...]
A rerun of the same command resumes from the workdir's checkpoint.

Options (paths are relative to the repository root):
  --config CONFIG       config file, with :args (default configs/digits.py)
  --workdir DIR         run directory (default runs/digits)
  --set FIELD=VALUE     config override (repeatable), e.g. --set max_steps=2000
  --data-dir DIR        dataset folder (IDX files or a tfds data_dir); sets TFDS_DATA_DIR too
  --venv DIR            virtual environment (default .venv)
  --python PYTHON       interpreter that creates the venv (default python3; needs >= 3.11)
  --reinstall           pip install even if the package looks installed
  --dry-run             print the commands, one per line, and run none of them
  -h, --help            this message
  -- ARGS...            extra arguments for zhang train (e.g. --restart, --max_steps 500)
EOF
}

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG="configs/digits.py" WORKDIR="runs/digits" DATA_DIR="" VENV=".venv" PYTHON="python3"
REINSTALL=0 DRY_RUN=0 SETS=() EXTRA=()

while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h|--help) usage; exit 0 ;;
    --config) need "$@"; CONFIG=$2; shift 2 ;;
    --workdir) need "$@"; WORKDIR=$2; shift 2 ;;
    --set) need "$@"; SETS+=("$2"); shift 2 ;;
    --data-dir) need "$@"; DATA_DIR=$2; shift 2 ;;
    --venv) need "$@"; VENV=${2%/}; shift 2 ;;
    --python) need "$@"; PYTHON=$2; shift 2 ;;
    --reinstall) REINSTALL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $1 (see -h)" ;;
    *) die "unexpected argument $1 (see -h)" ;;
  esac
done

run cd "$REPO"
cd "$REPO"  # the checks below look at the repository's files, in a dry run too
[[ -x $VENV/bin/python ]] || run "$PYTHON" -m venv "$VENV"
pkg=.  # gs:// paths need the gcs extra (gcsfs)
[[ $WORKDIR != gs://* && $DATA_DIR != gs://* ]] || pkg=".[gcs]"
if ((REINSTALL)) || [[ ! -x $VENV/bin/zhang || pyproject.toml -nt $VENV/bin/zhang ]] \
    || { [[ $pkg != . ]] && ! compgen -G "$VENV/lib/python3*/site-packages/gcsfs" >/dev/null; }; then
  run "$VENV/bin/pip" install -q -e "$pkg"
fi
train=("$VENV/bin/python" -m zhang train --config "$CONFIG" --workdir "$WORKDIR")
for s in "${SETS[@]+"${SETS[@]}"}"; do train+=(--set "$s"); done
[[ -z $DATA_DIR ]] || train=(env TFDS_DATA_DIR="$DATA_DIR" "${train[@]}" --data_dir "$DATA_DIR")
run "${train[@]}" "${EXTRA[@]+"${EXTRA[@]}"}"
