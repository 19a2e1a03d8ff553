#!/usr/bin/env bash
# Prints a Python interpreter of the given version (X.Y): pythonX.Y on PATH, else pyenv's; else python3 with a
# note on stderr.   bash .ci/find_python.sh 3.13
set -euo pipefail
python_version="$1"
for candidate in "python$python_version" "$(pyenv root 2>/dev/null)/versions/$python_version".*/bin/python3; do
  if "$candidate" -c "" > /dev/null 2>&1; then echo "$candidate"; exit 0; fi
done
echo "NOTE: no Python $python_version here; running on $(python3 --version)" >&2
echo python3
