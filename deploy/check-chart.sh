#!/usr/bin/env bash
# Lint, render and validate helm/slimserve with no helm binary and no cluster:
# Helm v4's engine from PyPI (helm-python-sdk), the Kubernetes schemas from
# PyPI (kubernetes-validate, strict, several Kubernetes versions), and the
# chart's promises (security, probes, drain, HPA, monitoring) as pytest tests.
#
#   bash deploy/check-chart.sh [pytest args]
#
# Makes (or reuses) a venv at $SLIMSERVE_CHART_VENV (default
# /tmp/slimserve-chart-venv) with deploy/requirements.txt. Exits non-zero on
# any failure. About 30 s on a fresh machine (the wheels are ~100 MB), 5 s after.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SLIMSERVE_CHART_VENV:-/tmp/slimserve-chart-venv}"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "check-chart: creating venv $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi

"$venv/bin/python" -c 'import helm_python as h; print("check-chart: Helm SDK", h.helm_sdk_version(), "| kubernetes-validate schemas up to", __import__("kubernetes_validate.utils", fromlist=["x"]).latest_version())'
cd "$here/.."
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$here/test_chart.py" "$@"
