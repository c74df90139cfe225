#!/usr/bin/env bash
# Make the venv with the OpenAPI validator that tests/openapi.rs runs (CI calls this before
# `cargo test`). Default location: target/openapi-venv (inside the ignored target/ folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${1:-target/openapi-venv}"
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/openapi/requirements.txt
fi
"$venv/bin/openapi-spec-validator" --version 2>/dev/null || "$venv/bin/pip" show openapi-spec-validator | head -2
