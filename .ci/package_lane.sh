#!/usr/bin/env bash
# The package lane (issue 27): installs what a user installs. Builds the sdist and the wheel with a plain
# `python -m build` (isolated: no torch at build time), checks that both carry the kernel sources, then, in fresh
# venvs outside the repository with torch from the registry, runs .ci/smoke_installed.py from an empty folder:
#   1. the wheel, with the train extra (WHEEL_PYTHON, WHEEL_SPECS) -> kernels compiled from the package's csrc/ on
#      first use
#   2. the sdist, pip install (isolated build) (SDIST_PYTHON, SDIST_SPECS) -> the same
#   3. in that venv, a wheel built from the sdist with torch present (pip wheel --no-build-isolation) -> its
#      compiled _C loads
#   4. that install with _build_info.json naming another torch -> one warning, first-use compile instead of _C
# Each run checks the fused cpu backend against the reference on fresh random inputs, a drop-in, env_report and
# `synthcl-train --help` (with the train extra: it works; without: it fails naming the extra). Prints each dist's
# file count and kernel files, and the time of each step and of the lane.
#
#   bash .ci/package_lane.sh [WHEEL_PYTHON "WHEEL_SPECS" [SDIST_PYTHON "SDIST_SPECS"]]
#   (default: 3.11 "torch==2.13.0" for both: torch's CPU-only build from disk, small and fast)
set -euo pipefail
cd "$(dirname "$0")/.."
wheel_python_version="${1:-3.11}" wheel_specs="${2:-torch==2.13.0}"
sdist_python_version="${3:-3.11}" sdist_specs="${4:-torch==2.13.0}"
started=$(date +%s) last=$(date +%s)
step() { echo "package lane: $1: $(( $(date +%s) - last )) s"; last=$(date +%s); }
wheel_python=$(bash .ci/find_python.sh "$wheel_python_version")
sdist_python=$(bash .ci/find_python.sh "$sdist_python_version")
work=$(mktemp -d "${TMPDIR:-/tmp}/synthcl_fast-package-lane.XXXXXX")
trap 'rm -rf "$work"' EXIT
export SYNTHCL_FAST_CACHE="$work/cache" PIP_DISABLE_PIP_VERSION_CHECK=1

# the tracked tree, as a fresh clone has it (the build writes build/ and *.egg-info/ there, not here)
mkdir -p "$work/src" "$work/run" "$work/aot"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work/src"
cp .ci/smoke_installed.py "$work/run/"

"$sdist_python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q build
(cd "$work/src" && "$work/tools/bin/python" -m build --outdir "$work/dist" > "$work/build.log" 2>&1) ||
  { cat "$work/build.log"; exit 1; }
step "python -m build"
wheel=$(echo "$work"/dist/*.whl) sdist=$(echo "$work"/dist/*.tar.gz)
python3 .ci/dist_contents.py "$wheel"
python3 .ci/dist_contents.py "$sdist"

smoke() {  # VENV EXPECT [--train-extra]
  (cd "$work/run" && PATH="$1/bin:$PATH" "$1/bin/python" smoke_installed.py --expect "${@:2}")
  step "smoke $2"
}

# shellcheck disable=SC2086  # WHEEL_SPECS and SDIST_SPECS are lists of requirement specifiers
{
  "$wheel_python" -m venv "$work/venv-wheel"
  "$work/venv-wheel/bin/pip" install -q $wheel_specs "$wheel[train]"
  step "venv with the wheel"
  smoke "$work/venv-wheel" first-use --train-extra

  "$sdist_python" -m venv "$work/venv-sdist"
  "$work/venv-sdist/bin/pip" install -q $sdist_specs setuptools wheel "$sdist"
  step "venv with the sdist"
  smoke "$work/venv-sdist" first-use

  (cd "$work/run" && "$work/venv-sdist/bin/pip" wheel -q --no-build-isolation --no-deps -w "$work/aot" "$sdist")
  step "pip wheel --no-build-isolation"
  aot_wheel=$(echo "$work"/aot/*.whl)
  python3 .ci/dist_contents.py --extension "$aot_wheel"
  "$work/venv-sdist/bin/pip" install -q --force-reinstall --no-deps "$aot_wheel"
  smoke "$work/venv-sdist" ahead-of-time
}

# the torch installed later differs from the one _C was built against (simulated: the record names another)
(cd "$work/run" && "$work/venv-sdist/bin/python" - <<'PY'
import json
from synthcl_fast.backends.native import BUILD_INFO
BUILD_INFO.write_text(json.dumps(dict(json.loads(BUILD_INFO.read_text()), torch="2.12.0")))
PY
)
smoke "$work/venv-sdist" mismatch
rm -rf "$work"  # several GB of venvs (the trap removes them after a failure)
step "removing the venvs"
echo "package lane (wheel: $("$wheel_python" --version), $wheel_specs; sdist: $("$sdist_python" --version), \
$sdist_specs): $(( $(date +%s) - started )) s"
