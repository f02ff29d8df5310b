#!/usr/bin/env bash
# Creates .venv with torch==2.13.0 and deepshrink installed, and Debian's Fashion-MNIST package.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
apt_install() {
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        echo "setup: installing python3-venv (Debian)"
        apt_install python3-venv
        "$PYTHON" -m venv .venv
    fi
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0"
    .venv/bin/pip install -q torch==2.13.0
fi
if ! .venv/bin/python -c "import deepshrink, pytest, hypothesis, sklearn" 2>/dev/null \
        || [ pyproject.toml -nt .venv/.deepshrink-installed ]; then
    echo "setup: installing deepshrink and its test extras"
    .venv/bin/pip install -q -e ".[test]"
    touch .venv/.deepshrink-installed
fi
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
        && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
fi
if ! command -v g++ >/dev/null || ! command -v ninja >/dev/null || ! .venv/bin/python -c "import sysconfig, os; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" 2>/dev/null; then
    echo "setup: installing g++ and the Python headers (Debian), for the native bit kernels"
    apt_install g++ python3-dev ninja-build || echo "setup: no compiler; binary layers will run on the float path"
fi
if ! .venv/bin/python -c "import deepshrink.kernels as k, sys; sys.exit(k.native() is None)" 2>/dev/null; then
    echo "setup: building the native bit kernels"
    .venv/bin/python -c "import deepshrink.kernels as k; k.build()" \
        || echo "setup: native bit kernels did not build; binary layers will run on the float path"
fi
