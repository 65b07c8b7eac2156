"""Build a corpus of the built-in models: `python -m scripts.corpus.build --target small|large|xl --out DIR`.

  small  about 4.7 min: 10 re-encoded excerpts (WAV/FLAC/OGG Vorbis/Ogg Opus/MP3) from 7 packages and
         5 score renders, with captions.jsonl (about 14 MB)
  large  the full tracks of 16 Debian music packages (about 21.8 h) and about 2 h of score renders,
         with manifest.jsonl (about 3-8 min and 1.3 GB of package downloads)
  xl     large plus heavy game-data packages (about +11 h, 3.6 GB more downloads)

Writes into --out (created; a previous build there is replaced): the audio, the manifest,
summary.json, build.json (the target, SoundFont, render hours and seed, packages, tool versions)
and LICENSES/. Downloads and extractions are kept in --cache for the next build.
Needs apt-get with Debian bookworm package lists (no root for downloads), dpkg-deb, the FluidSynth
CLI, and python packages soundfile, music21, mido, mutagen (`pip install -e '.[corpus]'`);
scripts/corpus/build_corpus.sh installs what is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from scripts.corpus import debian, records
from scripts.corpus.errors import CorpusError
from scripts.corpus.large import RENDER_SEED, build_large
from scripts.corpus.packages import DEFAULT_SOUNDFONT, SOUNDFONTS, packages_for
from scripts.corpus.small import build_small, small_packages
from tokenmill.tokenizers.artifacts import atomic_write_local

TARGETS = ("small", "large", "xl")
BUILD_MARKERS = ("summary.json", "captions.jsonl", "manifest.jsonl", "build.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m scripts.corpus.build", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("--target", required=True, choices=TARGETS)
    ap.add_argument("--out", required=True, help="the corpus folder to write")
    ap.add_argument("--cache", default=os.environ.get("CACHE", os.path.expanduser("~/.cache/tokenmill-corpus")),
                    help="download/extraction cache (default: $CACHE or ~/.cache/tokenmill-corpus)")
    ap.add_argument("--render_hours", type=float, default=2.0,
                    help="hours of score renders in large/xl (default 2; 0 = none)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="render processes (default: CPUs)")
    ap.add_argument("--soundfont", default=DEFAULT_SOUNDFONT, choices=list(SOUNDFONTS),
                    help=f"Debian package of the GM SoundFont for renders (default {DEFAULT_SOUNDFONT})")
    return ap.parse_args(argv)


def clear_output(out: str) -> None:
    """Remove a previous build at `out`; refuse a non-empty folder that is not one."""
    if os.path.isdir(out) and os.listdir(out):
        if not any(os.path.exists(os.path.join(out, m)) for m in BUILD_MARKERS):
            raise CorpusError(f"{out} is not empty and holds no previous corpus build ({', '.join(BUILD_MARKERS)}); "
                              "pass an empty or new folder as --out")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)


def prepare_soundfont(cache: str, package: str) -> tuple[str, str]:
    """(path of the SoundFont file, its caption name), downloading and extracting the package."""
    debian.download(cache, [package])
    root = debian.extract(cache, package)
    return os.path.join(root, SOUNDFONTS[package].path), SOUNDFONTS[package].name


def tool_versions() -> dict:
    """Versions of what shapes the output bytes: libsndfile, FluidSynth, the Python packages."""
    import subprocess
    from importlib import metadata

    import soundfile

    out = {"libsndfile": soundfile.__libsndfile_version__}
    try:
        r = subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True)
        out["fluidsynth"] = r.stdout.splitlines()[0].strip() if r.stdout else None
    except OSError:
        out["fluidsynth"] = None
    for name in ("soundfile", "numpy", "music21", "mido", "mutagen"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_config(args: argparse.Namespace) -> dict:
    """What this build was asked for, saved beside it as build.json (workers and paths left out:
    they do not change the output)."""
    return dict(target=args.target, soundfont=args.soundfont,
                render_hours=args.render_hours if args.target != "small" else 0.0,
                render_seed=RENDER_SEED if args.target != "small" else None,
                packages=small_packages() if args.target == "small" else packages_for(args.target),
                tools=tool_versions())


def build(args: argparse.Namespace) -> dict:
    sf2, sf_name = prepare_soundfont(args.cache, args.soundfont)
    t0 = time.time()
    clear_output(args.out)
    atomic_write_local(Path(args.out) / "build.json", json.dumps(build_config(args), indent=1).encode())
    if args.target == "small":
        recs = build_small(args.cache, args.out, sf2, sf_name, args.soundfont)
    else:
        recs = build_large(args.cache, args.out, packages_for(args.target), sf2, sf_name, args.soundfont,
                           args.render_hours, args.workers)
    summary = records.summarize(recs)
    summary["build_seconds"] = round(time.time() - t0, 1)
    records.write_summary(args.out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = build(args)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    debian.log(f"done: {args.out}")
    print(json.dumps({k: v for k, v in summary.items() if k != "by_source"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
