#!/usr/bin/env bash
# Build a corpus of tokenmill's built-in models, installing what the build needs first.
#
#   scripts/corpus/build_corpus.sh small|large|xl OUT_DIR
#
# Installs (as root, only when missing) the FluidSynth CLI, and the Debian package lists that
# `apt-get download` needs; makes a Python venv with the pinned packages of the recipe in the
# cache (unless PY names a Python that has them), then runs `python -m scripts.corpus.build`.
# Environment: CACHE       download/extraction cache (default ~/.cache/tokenmill-corpus)
#              PY          python with soundfile, numpy, music21, mido, mutagen (default: a venv in CACHE)
#              RENDER_HOURS  hours of score renders in large/xl (default 2)
#              JOBS        render processes (default: nproc)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ $# -ne 2 ]; then
  echo "usage: $0 small|large|xl OUT_DIR" >&2
  exit 2
fi
TARGET="$1"
OUT="$2"
CACHE="${CACHE:-$HOME/.cache/tokenmill-corpus}"
mkdir -p "$CACHE"

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: $1 needs root; run this script as root, or do it yourself: $2" >&2
    exit 2
  fi
}
# 1. Debian tools: dpkg-deb (always there) and the FluidSynth CLI for the score renders.
if ! command -v fluidsynth >/dev/null 2>&1; then
  need_root "installing fluidsynth" "apt-get install fluidsynth"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fluidsynth >/dev/null
fi
# apt-get download needs package lists that know the SoundFont and music packages.
if ! apt-cache show --no-all-versions timgm6mb-soundfont >/dev/null 2>&1; then
  need_root "apt-get update" "apt-get update (with Debian bookworm main in the sources)"
  apt-get update -qq
fi

# 2. Python packages (pinned: the versions the published corpora were built with).
if [ -z "${PY:-}" ]; then
  if [ ! -x "$CACHE/venv/bin/python" ]; then
    python3 -m venv "$CACHE/venv"
  fi
  "$CACHE/venv/bin/pip" install -q --disable-pip-version-check \
      "soundfile==0.14.0" "numpy>=1.24" "mido==1.3.3" "music21==10.5.1" "mutagen==1.48.1"
  PY="$CACHE/venv/bin/python"
fi

cd "$REPO"
exec env PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m scripts.corpus.build \
     --target "$TARGET" --out "$OUT" --cache "$CACHE" \
     --render_hours "${RENDER_HOURS:-2}" --workers "${JOBS:-$(nproc)}"
