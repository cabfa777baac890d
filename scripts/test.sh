#!/usr/bin/env bash
# One command from a fresh checkout to a test run (what CI runs too):
#   scripts/test.sh [pytest arguments]
# It installs
#   - on Debian/Ubuntu, when run as root: Xvfb and the Mesa OpenGL libraries napari's canvas needs
#     headless (apt-get; otherwise install them yourself, e.g. `sudo apt-get install xvfb libgl1-mesa-dri`);
#   - a virtual environment ($VENV, default .venv-test) with the CPU build of PyTorch 2.13 (a bare
#     `torch` requirement would pull a multi-GB CUDA build) and this package with the README's napari
#     install ([all]: napari with its Qt backend) and the [testing] extras;
# then runs `python -m pytest` (headless: pytest-xvfb starts a virtual screen).  SETUP_ONLY=1 stops before pytest
# (CI runs pytest itself, see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-test}"

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq xvfb libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 \
    libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
    libxcb-xinerama0 libxcb-xfixes0 libdbus-1-3 libfontconfig1 >/dev/null
elif ! command -v Xvfb >/dev/null 2>&1; then
  echo "note: Xvfb is not installed; the napari widget tests need it (Debian: apt-get install xvfb libgl1-mesa-dri)" >&2
fi

python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[all,testing]"

if [ "${SETUP_ONLY:-0}" = 1 ]; then
  exit 0
fi
python -m pytest "$@"
