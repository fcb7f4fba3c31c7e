#!/usr/bin/env bash
# Set up (dev) and run the test suite, then the real-model smoke test (-m slow).
# `.ci/run` calls exactly this. With arguments, they go to one pytest run instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# ssh-keygen is used by the interoperability tests (skipped when absent).
if ! command -v ssh-keygen >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq openssh-client >/dev/null 2>&1 \
        || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq openssh-client >/dev/null 2>&1)) \
        || echo "note: could not install openssh-client; ssh-keygen interop tests will skip"
fi
# chromium renders report.html headlessly in the robustness-report test; CI runs that test
# rather than skipping it (OFFSWITCH_REQUIRE_CHROMIUM makes a missing chromium a failure).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
        || (apt-get update -qq >/dev/null 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1)) \
        || echo "note: could not install chromium; the headless report test will fail"
fi
if [ "$(id -u)" = 0 ]; then export OFFSWITCH_REQUIRE_CHROMIUM=1; fi  # root can install it
.venv/bin/ruff check offswitch tests benchmarks scripts research
.venv/bin/ruff format --check offswitch tests benchmarks scripts research
if [ "$#" -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
# the main suite in two worker processes (pytest-xdist), one torch thread each (tests/conftest.py):
# most tests are small models and subprocesses that one thread runs nearly as fast as two
.venv/bin/python -m pytest -n 2
# the embedded default model's path, checked on every run (about 30 s: GGUF → float32 once),
# and the multi-process launches (about 6 min: accelerate/torchrun, 2 CPU processes; 6 min 25 s
# for the whole stage in session 10)
exec .venv/bin/python -m pytest -m slow tests/test_real_model.py tests/test_distributed.py
