#!/usr/bin/env bash
# Sets everything up, creates the demo run once (about a minute on a CPU), and starts the dashboard.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
export XAI_WORKSPACE="${XAI_WORKSPACE:-$PWD/workspace}"
.venv/bin/python -m core demo --workspace "$XAI_WORKSPACE"
exec .venv/bin/python -m streamlit run Home.py --server.headless "${HEADLESS:-false}" "$@"
