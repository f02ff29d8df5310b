#!/usr/bin/env bash
# The main job: set up, then run the quick compression benchmark on real Fashion-MNIST data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/deepshrink demo "$@"
