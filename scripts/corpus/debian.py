"""Debian packages in, extracted music out: `apt-get download` into a cache, unpack only the music.

Layout of the cache (any folder; the CLI's --cache):
  debs/<package>_<version>_<arch>.deb     as apt-get downloads it
  x/<package>/...                          the extracted members; x/<package>/.done holds the
                                           package's version and marks a finished extraction
  x/<package>/zip/...                      audio members of a zip/pk3 the package ships
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
import zipfile

from scripts.corpus.errors import CorpusError
from scripts.corpus.packages import AUDIO_EXTENSIONS, BY_NAME, SOUNDFONTS


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def deb_path(cache: str, package: str) -> str | None:
    """The downloaded .deb of `package` in the cache (the last by name), or None."""
    hits = sorted(glob.glob(os.path.join(cache, "debs", package + "_*.deb")))
    return hits[-1] if hits else None


def download_specs(package: str) -> list[str]:
    """What to ask apt-get for, in order: the pinned version, then the archive's candidate."""
    pinned = BY_NAME[package].version if package in BY_NAME else None
    return ([f"{package}={pinned}"] if pinned else []) + [package]


def download(cache: str, packages: list[str]) -> None:
    """Download every package not already in the cache (no root needed; needs apt package lists)."""
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    for package in packages:
        if deb_path(cache, package):
            continue
        specs = download_specs(package)
        for spec in specs:
            r = subprocess.run(["apt-get", "download", "-q", spec], cwd=debs, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
            if r.returncode == 0:
                if spec == package and len(specs) > 1:
                    log(f"WARNING: {specs[0]} is not in the archive; took the candidate version of {package}")
                break
        else:
            raise CorpusError(f"apt-get download {package} failed: {r.stderr.strip()[-300:]}. Add the Debian "
                              "bookworm archive to the apt sources and run `apt-get update` (as root), or put "
                              f"the .deb into {debs}/ by hand")


def deb_version(deb: str) -> str:
    r = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True, text=True)
    if r.returncode != 0:
        raise CorpusError(f"{deb}: dpkg-deb cannot read it ({r.stderr.strip()}); delete it to download it again")
    return r.stdout.strip()


def members_of(package: str) -> list[str]:
    if package in SOUNDFONTS:
        return SOUNDFONTS[package].members()
    if package in BY_NAME:
        return BY_NAME[package].members()
    raise CorpusError(f"{package} is neither a music package nor a SoundFont of scripts/corpus/packages.py")


def _unzip_audio(root: str, archive: str, prefix: str) -> None:
    """Extract the audio members under `prefix` of the zip/pk3 at root/archive into root/zip."""
    full = os.path.join(root, archive)
    with zipfile.ZipFile(full) as z:
        for m in z.infolist():
            if m.filename.startswith(prefix) and m.filename.lower().endswith(AUDIO_EXTENSIONS):
                z.extract(m, os.path.join(root, "zip"))
    os.remove(full)


def extract(cache: str, package: str) -> str:
    """Extract the music (and the copyright file) of a downloaded package; returns its root."""
    root = os.path.join(cache, "x", package)
    stamp = os.path.join(root, ".done")
    if os.path.exists(stamp):
        return root
    deb = deb_path(cache, package)
    if deb is None:
        raise CorpusError(f"{package} is not downloaded into {cache}/debs; run download() first")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    data = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
    r = subprocess.run(["tar", "-x", "-C", root] + members_of(package), stdin=data.stdout,
                       stderr=subprocess.PIPE, text=True)
    data.wait()
    if r.returncode != 0:
        raise CorpusError(f"{deb}: extracting {package} failed ({r.stderr.strip()[-300:]}); if the package's "
                          "layout changed, update its paths in scripts/corpus/packages.py")
    spec = BY_NAME.get(package)
    if spec is not None and spec.archive:
        _unzip_audio(root, *spec.archive)
    with open(stamp, "w") as f:
        f.write(deb_version(deb))
    return root


def extracted_version(root: str) -> str:
    with open(os.path.join(root, ".done")) as f:
        return f.read().strip()


def copy_licenses(cache: str, packages: list[str], out: str) -> None:
    """Copy each package's debian/copyright, and music21's corpus licence, into out/LICENSES."""
    dest = os.path.join(out, "LICENSES")
    os.makedirs(dest, exist_ok=True)
    for package in packages:
        src = os.path.join(cache, "x", package, "usr/share/doc", package, "copyright")
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(dest, f"{package}.copyright"))
    try:
        import music21
    except ImportError:
        return
    src = os.path.join(os.path.dirname(music21.__file__), "corpus", "license.txt")
    if os.path.exists(src):
        shutil.copyfile(src, os.path.join(dest, "music21-corpus-license.txt"))
