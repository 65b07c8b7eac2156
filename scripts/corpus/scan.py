"""Which extracted files are tracks, what we know of each, and which are duplicates.

Rules, in order, on the path of a file inside its package:
  1. audio only (by extension), never a symlink;
  2. not matched by the package's `skip` regexes; matched by its `only` regex if it has one;
  3. decodable by libsndfile and at least MIN_TRACK_S long (shorter files are jingles/effects).
In `large` and `xl`, a file whose bytes equal an earlier file's (sha1, packages in table order,
files in sorted walk order) is left out: the first copy wins.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from scripts.corpus.debian import extract, extracted_version, log
from scripts.corpus.packages import AUDIO_EXTENSIONS, BY_NAME, MIN_TRACK_S
from scripts.corpus.tags import package_metadata, read_tags, track_caption


@dataclass
class Track:
    path: str          # on disk, in the extraction cache
    rel: str           # inside the package
    package: str
    version: str
    sample_rate: int
    channels: int
    duration_s: float
    format: str        # libsndfile major format, e.g. OGG
    subtype: str       # e.g. VORBIS
    tags: dict = field(default_factory=dict)
    caption: str = ""


def wanted_by_rules(package: str, rel: str) -> bool:
    """Rules 1-2 (rule 1's symlink part is checked on disk by the scanner)."""
    spec = BY_NAME[package]
    if not rel.lower().endswith(AUDIO_EXTENSIONS):
        return False
    if any(re.search(rx, rel) for rx in spec.skip):
        return False
    return not (spec.only and not re.search(spec.only, rel))


def walk_sorted(root: str):
    """Files under root in a fixed order: folders and names sorted, depth first."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield os.path.join(dirpath, name)


def scan_package(cache: str, package: str) -> list[Track]:
    """The tracks of a downloaded package (extracting it first), with tags and captions."""
    import soundfile as sf

    root = extract(cache, package)
    version = extracted_version(root)
    tracks = []
    for path in walk_sorted(root):
        rel = os.path.relpath(path, root)
        if os.path.islink(path) or not wanted_by_rules(package, rel):
            continue
        try:
            info = sf.info(path)
        except Exception as e:
            log(f"  skip undecodable {rel}: {e}")
            continue
        if info.duration < MIN_TRACK_S:
            continue
        tags = read_tags(path)
        tags.update(package_metadata(package, path))
        tracks.append(Track(path, rel, package, version, info.samplerate, info.channels, info.duration,
                            info.format, info.subtype, tags, track_caption(package, tags, rel)))
    return tracks


def file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Deduper:
    """Remembers the sha1 of every kept file; `first(sha1, rel)` is False for a byte-identical repeat."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def first(self, sha1: str, rel: str) -> bool:
        if sha1 in self.seen:
            return False
        self.seen[sha1] = rel
        return True


def large_destination(package: str, rel: str) -> str:
    """Where a track goes in `large`/`xl`, relative to the corpus root: audio/<package>/<short path>."""
    return os.path.join("audio", package, rel.replace("usr/share/", "").replace("games/", ""))
