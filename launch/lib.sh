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
