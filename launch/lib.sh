# Shared by the launch scripts: error exit, shell quoting, and dry-run-aware execution.
# Callers set PROG and DRY_RUN.

# An option that takes a value: need "$@" before reading $2.
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }
# Quote one word for a POSIX shell, only if needed (--flag=VALUE: only the value).
q() {
  if [[ $1 =~ ^(--[A-Za-z0-9_-]+=)(.*[^A-Za-z0-9_@%+=:,./-].*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"; q "${BASH_REMATCH[2]}"
  elif [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
show() {
  local out="" a
  for a in "$@"; do out+="${out:+ }$(q "$a")"; done
  printf '%s\n' "$out"
}
run() {
  if ((DRY_RUN)); then show "$@"; return 0; fi
  printf '+ %s\n' "$(show "$@")" >&2
  "$@"
}

# --- a training run detached on a remote machine ------------------------------------------------
# POSIX sh for ssh. The run's files are in ~/zhang-run on that machine (local: the workdir may
# be gs://): train.pid (the wrapper's pid, which is also its process group), train.log, and
# train.rc (the exit status, once it ended; written whole, through a rename). `setsid nohup`
# frees it from the ssh session, so a dropped connection does not stop it; the wrapper only
# records the exit status (a TERM it gets is ignored until the run ends), and SIGTERM from
# REMOTE_STOP or from the machine's shutdown reaches the python process itself, which saves a
# checkpoint and exits.
RUNNING='running() { p=$(cat ~/zhang-run/train.pid 2>/dev/null) && ps -ww -o args= -p "$p" 2>/dev/null | grep -q "zhang train"; }'
# remote_start TRAIN: start TRAIN (a command line) detached, unless a run is already going.
remote_start() {
  printf '%s' "$RUNNING"'; mkdir -p ~/zhang-run; cd ~/zhang || exit 1; if running; then echo "$(hostname): a run is going (pid $p): not starting another"; exit 0; fi; rm -f ~/zhang-run/train.rc; setsid nohup sh -c '\''trap : TERM; "$@"; echo $? > ~/zhang-run/train.rc.new; mv -f ~/zhang-run/train.rc.new ~/zhang-run/train.rc'\'' zhang-run '"$1"' >> ~/zhang-run/train.log 2>&1 < /dev/null & echo $! > ~/zhang-run/train.pid; echo "$(hostname): started (log: ~/zhang-run/train.log)"'
}
# Follow the log until the run ends (Ctrl-C stops only the following); exit with its status.
REMOTE_ATTACH="$RUNNING"'; if running; then echo "$(hostname): following ~/zhang-run/train.log (Ctrl-C stops following, not the run)"; tail -n 100 --pid="$p" -F ~/zhang-run/train.log; else tail -n 100 ~/zhang-run/train.log 2>/dev/null; fi; if [ -s ~/zhang-run/train.rc ]; then rc=$(cat ~/zhang-run/train.rc); echo "$(hostname): the run ended with exit status $rc"; exit "$rc"; fi; echo "$(hostname): no run is going, and none left an exit status in ~/zhang-run"; exit 1'
# SIGTERM the run's process group, then wait until it has saved and exited.
REMOTE_STOP="$RUNNING"'; if running; then echo "$(hostname): SIGTERM to the run (pid $p); waiting for it to save and exit"; kill -TERM "-$p"; while kill -0 "$p" 2>/dev/null; do sleep 2; done; echo "$(hostname): stopped"; else echo "$(hostname): no run going"; fi'
# Before setup: leave a machine alone while a run is going on it.
REMOTE_IDLE="$RUNNING"'; if running; then echo "$(hostname): a run is going (pid $p): setup skipped (stop it first to update the code)"; exit 0; fi'
