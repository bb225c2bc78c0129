#!/usr/bin/env bash
# Fresh-pair A/B (docs/performance.md): a new cluster of this tree's code and one of
# BASE's (a directory holding another checkout's dyno/, e.g. `git archive main | tar -x -C /tmp/base`),
# started in the order given, then interleaved redis-benchmark rounds against each
# (scripts/ab_pairs_run.py): medians of ops/s and CPU per request from /proc/PID/schedstat.
#   BASE=/tmp/base scripts/ab_pairs.sh RACKS NODES_PER_RACK LEVEL TESTS PIPES [base|new]
#   BASE=/tmp/base scripts/ab_pairs.sh 3 1 DC_ONE set,get 16,1 base
set -euo pipefail
racks=$1; per=$2; level=$3; tests=$4; pipes=$5; first=${6:-base}
here="$(cd "$(dirname "$0")/.." && pwd)"
python="$here/.venv/bin/python"
work="${AB_DIR:-/tmp/dyno-ab}"
: "${BASE:?set BASE to the directory holding the baseline dyno package}"
up() {  # name tree
  local env=()
  [ "$2" = base ] && env=(env PYTHONPATH="$BASE" PYTHONSAFEPATH=1)
  "${env[@]}" "$python" -m dyno cluster up --dir "$work/$1" --racks "$racks" --nodes-per-rack "$per" \
    --read-consistency "$level" --write-consistency "$level" >/dev/null
}
down() { "$python" -m dyno cluster down --dir "$work/$1" >/dev/null 2>&1 || true; rm -rf "${work:?}/$1"; }
trap 'down new; down base' EXIT
down new; down base
if [ "$first" = base ]; then up base base; up new new; else up new new; up base base; fi
for t in ${tests//,/ }; do "$python" "$here/scripts/ab_pairs_run.py" "$work/new" "$work/base" "$t" "$pipes"; done
