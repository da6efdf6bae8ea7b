# Sourced by every script of docs/results/make/: run from the repository root, with this
# checkout's zhang first on PATH, stopping at the first command that fails.
#
# Runs and reports go to runs/ (git-ignored). `zhang train` on a finished run of the same
# config does nothing, so a script run again reuses its runs: delete a run's folder to train
# it again (the pages' wall times are of fresh runs). Only `keep` writes into docs/results/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
if [[ -x .venv/bin/zhang ]]; then
  PATH="$PWD/.venv/bin:$PATH"
fi
mkdir -p runs

# keep PAGE FOLDER FILE[=NAME]...: copies each FILE of FOLDER into docs/results/PAGE/ (as
# NAME when given), through a temporary file and a rename.
keep() {
  local page=$1 from=$2 item
  shift 2
  mkdir -p "docs/results/$page"
  for item in "$@"; do
    local to="docs/results/$page/${item#*=}"
    cp "$from/${item%%=*}" "$to.tmp"
    mv "$to.tmp" "$to"
    echo "kept $to"
  done
}

# keep_report PAGE FOLDER: keeps every page and figure of a `zhang report` folder (report.md
# links them all).
keep_report() {
  local from=$2
  keep "$1" "$from" $(cd "$from" && ls -- *.md *.png)
}
