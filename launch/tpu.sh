#!/usr/bin/env bash
# Train a zhang config on a Cloud TPU VM (one host or a multi-host pod slice). See -h and docs/tpu.md.
set -euo pipefail

PROG=tpu.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh [PHASE...] --name NAME --zone ZONE --workdir gs://BUCKET/PATH [options]

Train a config on a Cloud TPU VM: the same command runs on every worker of the slice
(one process per host, `--distributed`), writing to a gs:// workdir that outlives the VM.

Phases (run in the order given; default: all):
  create   request the slice as a queued resource and wait until it is ACTIVE (with
           --legacy-create: `tpu-vm create`); skipped if it exists and is usable; a
           SUSPENDED / PREEMPTED one is deleted and created again
  setup    copy the repo (a `git archive` tarball of --ref, default HEAD) to every worker,
           unpack it in ~/zhang, create ~/zhang-venv (once; Python >= 3.11) and
           `pip install -e ~/zhang[gcs] jax[tpu]`; skipped on a worker where a run is going
  run      on every worker where no run is going, start detached (it outlives ssh)
             python -m zhang train --config CONFIG --workdir WORKDIR --distributed ...
           with its output in ~/zhang-run/train.log there; then attach. A rerun resumes
           from the workdir's checkpoint; a run still going is attached to, not restarted
  attach   follow worker 0's log until the run ends (Ctrl-C leaves the run going); exits
           with the run's exit status
  stop     SIGTERM the run on every worker and wait: it saves a checkpoint and exits
  fetch    copy the workdir (without checkpoints/) to --results
  delete   delete the queued resource and its TPU VM (with --legacy-create: the TPU VM)
  all      create setup run fetch delete (delete is left out with --keep)
A phase run alone takes the same flags as the command that created the VM.

Required:
  --name NAME              TPU VM name (also the queued resource's name)
  --zone ZONE              e.g. us-central2-b (v4), us-west4-a (v5e), us-east1-d (v6e)
  --workdir gs://B/PATH    run directory (needed by run and fetch)
Options:
  --accelerator-type T     e.g. v4-8, v4-32, v5litepod-8, v5litepod-16 (default v4-8)
  --version RUNTIME        TPU software version (default from the type: v4 tpu-ubuntu2204-base,
                           v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --project PROJECT        Google Cloud project (default: gcloud's configured one)
  --spot                   spot capacity (cheaper, may be preempted at any time)
  --legacy-create          create with `gcloud compute tpus tpu-vm create` (fails at once
                           when the zone has no capacity) instead of a queued resource
  --preemptible            legacy preemptible VM (needs --legacy-create)
  --config CONFIG          config path in the repo, with :args (default configs/fig1.py)
  --data-dir gs://B/tfds   TFDS_DATA_DIR on the workers (default: gs://BUCKET/tfds, BUCKET
                           being the workdir's bucket); --data_dir is the same
  --set FIELD=VALUE        config override for zhang train (repeatable)
  --results DIR            local folder for fetch (default runs/<workdir's last part>)
  --with-checkpoints       fetch checkpoints/ too
  --ref REF                git revision to copy in setup (default HEAD; uncommitted changes
                           are not copied)
  --keep                   never delete the VM (all then ends after fetch)
  --dry-run                print the commands, one per line, and run none of them (nor the
                           `describe` queries that make create idempotent and wait for it)
  -h, --help               this message
  -- ARGS...               extra arguments for zhang train

Example (the Figure 1 grid on CIFAR-10 on a 16-chip v5e slice, spot):
  launch/tpu.sh all --name zhang-fig1 --zone us-west4-a --accelerator-type v5litepod-16 \
      --spot --workdir gs://my-bucket/runs/fig1
EOF
}

# --- helpers ---------------------------------------------------------------------------------

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Its own run(): on failure, say what to do next.
run() {
  if ((DRY_RUN)); then show "$@"; return 0; fi
  printf '+ %s\n' "$(show "$@")" >&2
  local rc=0
  "$@" || rc=$?
  if ((rc != 0)); then
    printf '%s: failed (exit %d): %s\n' "$PROG" "$rc" "$(show "$@")" >&2
    printf '%s: the TPU VM %s is left as it is: rerun the same command to go on (a run still going\n' \
      "$PROG" "$NAME" >&2
    printf '%s: on the workers is attached to, not restarted), or run the delete phase.\n' "$PROG" >&2
    exit "$rc"
  fi
}
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# --- arguments -------------------------------------------------------------------------------

NAME="" ZONE="" WORKDIR="" ACCEL="v4-8" VERSION="" PROJECT="" CAPACITY="" QUEUED=1
CONFIG="configs/fig1.py" DATA_DIR="" RESULTS="" WITH_CKPT=0 REF="HEAD" KEEP=0 DRY_RUN=0
SETS=() EXTRA=() PHASES=()

while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h|--help) usage; exit 0 ;;
    --name) need "$@"; NAME=$2; shift 2 ;;
    --zone) need "$@"; ZONE=$2; shift 2 ;;
    --workdir) need "$@"; WORKDIR=${2%/}; shift 2 ;;
    --accelerator-type) need "$@"; ACCEL=$2; shift 2 ;;
    --version) need "$@"; VERSION=$2; shift 2 ;;
    --project) need "$@"; PROJECT=$2; shift 2 ;;
    --spot|--preemptible)
      [[ -z $CAPACITY || $CAPACITY == "$1" ]] || die "--spot and --preemptible exclude each other"
      CAPACITY=$1; shift ;;
    --queued) QUEUED=1; shift ;;  # the default
    --legacy-create) QUEUED=0; shift ;;
    --config) need "$@"; CONFIG=$2; shift 2 ;;
    --data-dir|--data_dir) need "$@"; DATA_DIR=${2%/}; shift 2 ;;
    --set) need "$@"; SETS+=("$2"); shift 2 ;;
    --results) need "$@"; RESULTS=$2; shift 2 ;;
    --with-checkpoints) WITH_CKPT=1; shift ;;
    --ref) need "$@"; REF=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    create|setup|run|attach|stop|fetch|delete) PHASES+=("$1"); shift ;;
    all) PHASES+=(create setup run fetch delete); shift ;;
    -*) die "unknown option $1 (see -h)" ;;
    *) die "unknown phase $1 (create, setup, run, attach, stop, fetch, delete or all; see -h)" ;;
  esac
done
((${#PHASES[@]})) || PHASES=(create setup run fetch delete)
if ((KEEP)); then  # --keep: never delete
  kept=()
  for p in "${PHASES[@]}"; do [[ $p == delete ]] || kept+=("$p"); done
  PHASES=("${kept[@]}")
fi

has_phase() { local p; for p in "${PHASES[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

[[ -n $NAME ]] || die "--name is required (the TPU VM's name)"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name $NAME: use lower-case letters, digits and hyphens, starting with a letter"
[[ -n $ZONE ]] || die "--zone is required (e.g. us-central2-b)"
if has_phase run || has_phase fetch; then
  [[ -n $WORKDIR ]] || die "--workdir gs://BUCKET/PATH is required for run and fetch"
fi
if [[ -n $WORKDIR && ! $WORKDIR =~ ^gs://[^/]+/.+ ]]; then
  die "--workdir must be gs://BUCKET/PATH (every worker writes to it, and it outlives the VM), not $WORKDIR"
fi
if [[ $CAPACITY == --preemptible ]] && ((QUEUED)); then
  die "--preemptible needs --legacy-create (queued resources take --spot)"
fi
if [[ -z $VERSION ]]; then
  case $ACCEL in
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "--version is required for accelerator type $ACCEL" ;;
  esac
fi
if [[ -z $DATA_DIR && -n $WORKDIR ]]; then
  bucket=${WORKDIR#gs://}; DATA_DIR="gs://${bucket%%/*}/tfds"
fi
[[ -n $RESULTS ]] || RESULTS="$REPO/runs/${WORKDIR##*/}"

GC=(--zone="$ZONE")
[[ -z $PROJECT ]] || GC+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)
TARBALL="${TMPDIR:-/tmp}/zhang-$NAME.tar.gz"

# --- what runs on every worker -----------------------------------------------------------------

# A venv with Python >= 3.11 (jax needs it): a system python3.1x, else one that uv installs
# (the images' python3 is 3.10).
VENV_SETUP='if [ ! -x ~/zhang-venv/bin/pip ]; then py=; for p in python3.13 python3.12 python3.11 python3; do if command -v $p >/dev/null && $p -c "import sys; sys.exit(sys.version_info < (3, 11))" && $p -m venv ~/zhang-venv; then py=$p; break; fi; rm -rf ~/zhang-venv; done; if [ -z "$py" ]; then curl -LsSf https://astral.sh/uv/install.sh | sh && ~/.local/bin/uv venv -q --seed --python 3.12 ~/zhang-venv; fi; fi'
# The gcs extra: gcsfs, which gs:// workdirs and data need.
REMOTE_SETUP="$REMOTE_IDLE; set -e; rm -rf ~/zhang; mkdir -p ~/zhang; tar -xzf ~/zhang.tar.gz -C ~/zhang; $VENV_SETUP; ~/zhang-venv/bin/pip install -q -U pip; ~/zhang-venv/bin/pip install -q -U -e ~/'zhang[gcs]' 'jax[tpu]'"

TRAIN="env TFDS_DATA_DIR=$(q "$DATA_DIR") ~/zhang-venv/bin/python -m zhang train"
TRAIN+=" --config $(q "$CONFIG") --workdir $(q "$WORKDIR") --distributed --no_progress"
for s in "${SETS[@]+"${SETS[@]}"}"; do TRAIN+=" --set $(q "$s")"; done
for a in "${EXTRA[@]+"${EXTRA[@]}"}"; do TRAIN+=" $(q "$a")"; done
REMOTE_START=$(remote_start "$TRAIN")  # REMOTE_ATTACH, REMOTE_STOP: lib.sh

# --- phases ----------------------------------------------------------------------------------

tpu_state() { "${TPU[@]}" describe "$NAME" "${GC[@]}" --format='value(state)' 2>/dev/null || true; }
qr_state() { "${QR[@]}" describe "$NAME" "${GC[@]}" --format='value(state.state)' 2>/dev/null || true; }

phase_create() {
  local cap=() state
  [[ -z $CAPACITY ]] || cap=("$CAPACITY")
  if ((QUEUED)); then
    state=""; ((DRY_RUN)) || state=$(qr_state)
    case $state in
      "") ;;
      SUSPENDED|FAILED) note "queued resource $NAME is $state: deleting it, then creating it again"
        run "${QR[@]}" delete "$NAME" "${GC[@]}" --force --quiet; state="" ;;
      *) note "queued resource $NAME exists ($state)" ;;
    esac
    [[ -n $state ]] || run "${QR[@]}" create "$NAME" "${GC[@]}" --node-id="$NAME" \
      --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${cap[@]+"${cap[@]}"}"
    ((DRY_RUN)) && return 0
    while state=$(qr_state); [[ $state != ACTIVE ]]; do
      case $state in
        FAILED|SUSPENDED|"") note "queued resource $NAME is ${state:-gone}"; exit 1 ;;
      esac
      note "queued resource $NAME is $state; waiting for capacity (Ctrl-C is safe: rerun create)"
      sleep 30
    done
  else
    state=""; ((DRY_RUN)) || state=$(tpu_state)
    case $state in
      "") ;;
      PREEMPTED|TERMINATED) note "TPU VM $NAME is $state: deleting it, then creating it again"
        run "${TPU[@]}" delete "$NAME" "${GC[@]}" --quiet; state="" ;;
      *) note "TPU VM $NAME exists ($state)" ;;
    esac
    [[ -n $state ]] || run "${TPU[@]}" create "$NAME" "${GC[@]}" \
      --accelerator-type="$ACCEL" --version="$VERSION" "${cap[@]+"${cap[@]}"}"
    ((DRY_RUN)) && return 0
    while state=$(tpu_state); [[ $state != READY ]]; do
      [[ -n $state ]] || { note "TPU VM $NAME does not exist"; exit 1; }
      note "TPU VM $NAME is $state; waiting"
      sleep 15
    done
  fi
}

phase_setup() {
  if [[ -e $REPO/.git ]]; then
    run git -C "$REPO" archive --format=tar.gz -o "$TARBALL" "$REF"
  else  # not a git checkout: pack the folder, without local state
    run tar -C "$REPO" --exclude=./.venv --exclude=./runs --exclude='*.egg-info' \
      --exclude=__pycache__ -czf "$TARBALL" .
  fi
  run "${TPU[@]}" scp "$TARBALL" "$NAME:zhang.tar.gz" --worker=all "${GC[@]}"
  run "${TPU[@]}" ssh "$NAME" "${GC[@]}" --worker=all --command="$REMOTE_SETUP"
}

phase_run() {
  run "${TPU[@]}" ssh "$NAME" "${GC[@]}" --worker=all --command="$REMOTE_START"
  phase_attach
}

phase_attach() {
  run "${TPU[@]}" ssh "$NAME" "${GC[@]}" --worker=0 --command="$REMOTE_ATTACH"
}

phase_stop() {
  run "${TPU[@]}" ssh "$NAME" "${GC[@]}" --worker=all --command="$REMOTE_STOP"
}

phase_fetch() {
  local ex=()
  ((WITH_CKPT)) || ex=(--exclude='^checkpoints/')
  run mkdir -p "$RESULTS"
  run gcloud storage rsync --recursive "${ex[@]+"${ex[@]}"}" "$WORKDIR" "$RESULTS"
  ((DRY_RUN)) || note "results in $RESULTS (summary.json: status, fit steps; \`zhang report $RESULTS --out DIR\`)"
}

phase_delete() {
  if ((QUEUED)); then
    run "${QR[@]}" delete "$NAME" "${GC[@]}" --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" "${GC[@]}" --quiet
  fi
}

for p in "${PHASES[@]}"; do
  "phase_$p"
done
