#!/usr/bin/env bash
# One compatibility lane (issue 16): a copy of the tree and a fresh venv with the given Python and packages, the
# package installed from scratch against them (its C++ kernels built ahead of time, its declared dependencies
# resolved beside the pinned ones), the versions env_report finds, then pytest with the given arguments.
#
#   bash .ci/compat_lane.sh NAME PYTHON_VERSION "PIP_SPECS" PYTEST_ARGS...
#
# The copy (build/compat-NAME/src) keeps the lane's extension, built against another torch, out of the main
# tree's synthcl_fast/.
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1" python_version="$2" specs="$3"
shift 3
lane="build/compat-$name"
started=$(date +%s)

python=$(bash .ci/find_python.sh "$python_version")

rm -rf "$lane"
mkdir -p "$lane/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$lane/src"
"$python" -m venv "$lane/venv"
. "$lane/venv/bin/activate"
cd "$lane/src"
# shellcheck disable=SC2086  # PIP_SPECS is a list of requirement specifiers
pip install -q $specs pytest hypothesis expecttest setuptools wheel
# the pins again, so that resolving the package's own dependencies cannot move them
# shellcheck disable=SC2086
pip install -q --no-build-isolation -e . $specs
python -m synthcl_fast.env_report | sed -n '/^versions:/,/^backends on cpu:/p'
python -m pytest -p no:cacheprovider "$@"
echo "compat lane $name: $(( $(date +%s) - started )) s"
