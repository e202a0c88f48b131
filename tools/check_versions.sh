#!/usr/bin/env bash
# Test the lab on both ends of its supported range: the lowest TRL with its lowest transformers, accelerate and
# datasets, and the newest releases. Each gets a fresh virtual environment under ${TMPDIR:-/tmp}.
#     bash tools/check_versions.sh            # both ends (about 5 minutes, needs the package index)
#     bash tools/check_versions.sh lowest     # one end
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A PINS=(
  [lowest]="trl==0.29.0 transformers==4.56.2 accelerate==1.4.0 datasets==3.0.0"
  [newest]="trl transformers accelerate datasets --upgrade"
)
TESTS="tests/test_trl_parity.py tests/test_training.py tests/test_losses.py tests/test_generate.py tests/test_models.py"
status=0
for end in ${@:-lowest newest}; do
  venv="${TMPDIR:-/tmp}/lab7-versions-$end"
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "torch==2.13.0" -e ".[dev]"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet ${PINS[$end]}
  echo "== $end: $("$venv/bin/python" -c 'import trl, transformers, accelerate, datasets as d; print(f"trl {trl.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, datasets {d.__version__}")')"
  # shellcheck disable=SC2086
  if "$venv/bin/python" -m pytest -q -p no:cacheprovider $TESTS; then echo "== $end: passed"; else echo "== $end: FAILED"; status=1; fi
done
exit $status
