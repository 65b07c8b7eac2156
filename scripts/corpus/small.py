"""`small`: about 4.7 min of varied real music in five containers, for tests and quick benches.

Ten excerpts of recorded tracks re-encoded to WAV, FLAC, OGG Vorbis, Ogg Opus and MP3 (each with
50 ms fades), plus five score renders (WAV, 24 kHz mono). captions.jsonl lists them by file name.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from scripts.corpus import debian, records
from scripts.corpus.errors import CorpusError
from scripts.corpus.packages import BY_NAME
from scripts.corpus.scan import Track, scan_package
from scripts.corpus.score_job import run_renders

QUIET_DB = -35.0  # an excerpt window this quiet (RMS, dBFS) moves on by SKIP_S
SKIP_S = 5
MAX_SKIPS = 10
FADE_S = 0.05
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


@dataclass(frozen=True)
class Clip:
    package: str
    suffix: str          # the end of the track's path inside the package
    start_s: int
    dur_s: int
    format: str          # libsndfile major format
    subtype: str
    ext: str
    mono: bool = False   # downmix (else keep the channels)

    def filename(self) -> str:
        """'<ext>/<package's first word>_<suffix stem>.<ext>', lower case, runs of other chars as '_'."""
        stem = f'{self.package.split("-")[0]}_{os.path.splitext(self.suffix)[0]}'
        return f"{self.ext}/{re.sub(r'[^A-Za-z0-9]+', '_', stem).strip('_').lower()}.{self.ext}"


@dataclass(frozen=True)
class SmallRender:
    corpus_path: str
    number: int | None
    cat: str
    ensemble: str
    program: int | None  # GM program of a solo
    qpm: int | None      # tempo when the score states none
    dur_s: int

    def filename(self) -> str:
        stem = re.sub(r"\.(abc|krn|mxl|xml)$", "", self.corpus_path.split("/")[-1])
        name = re.sub(r"[^A-Za-z0-9]+", "_", stem + (f"_{self.number}" if self.number else "")).lower()
        return f"wav/score_{self.cat}_{name}.wav"


CLIPS = (
    Clip("wesnoth-1.16-music", "breaking_the_chains.ogg", 40, 20, "OGG", "VORBIS", "ogg"),
    Clip("wesnoth-1.16-music", "traveling_minstrels.ogg", 30, 18, "FLAC", "PCM_16", "flac"),
    Clip("singularity-music", "Awakening.ogg", 50, 20, "FLAC", "PCM_16", "flac"),
    Clip("singularity-music", "Through Space.ogg", 60, 15, "OGG", "OPUS", "opus"),
    Clip("fretsonfire-songs-muldjord", "armygeddon/song.ogg", 60, 20, "OGG", "VORBIS", "ogg"),
    Clip("fretsonfire-songs-muldjord", "armygeddon/guitar.ogg", 60, 20, "FLAC", "PCM_16", "flac", mono=True),
    Clip("marsshooter-data", "01_-_Ezer_Ev.ogg", 70, 20, "OGG", "VORBIS", "ogg"),
    Clip("asc-music", "frontiers.mp3", 60, 20, "MP3", "MPEG_LAYER_III", "mp3"),
    Clip("drascula-music", "track2.ogg", 20, 12, "WAV", "PCM_16", "wav"),
    Clip("pushover-data", "greek.ogg", 10, 20, "FLAC", "PCM_16", "flac"),
)
RENDERS = (
    SmallRender("bach/bwv66.6", None, "bach", "string quartet", None, 80, 20),
    SmallRender("joplin/maple_leaf_rag", None, "joplin", "piano", None, None, 20),
    SmallRender("oneills1850/0626-0700.abc", 651, "oneills1850", "solo", 73, 110, 20),
    SmallRender("palestrina/Agnus_01", None, "palestrina", "choir", None, 72, 20),
    SmallRender("essenFolksong/fink0.abc", 77, "essenFolksong", "solo", 40, 100, 15),
)


def small_packages() -> list[str]:
    return sorted({c.package for c in CLIPS})


def render_jobs(out: str, sf2: str, sf_name: str) -> list[dict]:
    """The five render jobs (job seed = row index); see score_catalog for the keys."""
    return [dict(corpus_path=r.corpus_path, number=r.number, cat=r.cat, ensemble=r.ensemble, program=r.program,
                 qpm=r.qpm, seed=i, sf2=sf2, sf_name=sf_name, clip_start=0.0, clip_dur=r.dur_s, format="WAV",
                 out=os.path.join(out, r.filename()))
            for i, r in enumerate(RENDERS)]


def read_excerpt(track: Track, clip: Clip) -> tuple[np.ndarray, int, int]:
    """(float32 [n, ch], sample rate, start s): the clip's window, moved on while it is quiet."""
    import soundfile as sf

    start = clip.start_s
    with sf.SoundFile(track.path) as fh:
        sr = fh.samplerate
        for _ in range(MAX_SKIPS):
            fh.seek(int(start * sr))
            x = fh.read(int(clip.dur_s * sr), dtype="float32", always_2d=True)
            if np.sqrt((x ** 2).mean()) > 10 ** (QUIET_DB / 20) or start + clip.dur_s + SKIP_S > track.duration_s:
                break
            start += SKIP_S
    return x, sr, start


def fade(x: np.ndarray, sr: int) -> np.ndarray:
    """Linear fade-in and fade-out of FADE_S (in place)."""
    n = min(len(x), int(FADE_S * sr))
    ramp = np.linspace(0, 1, n, dtype=np.float32)[:, None]
    x[:n] *= ramp
    x[-n:] *= ramp[::-1]
    return x


def write_clip(track: Track, clip: Clip, out: str) -> dict:
    import soundfile as sf

    x, sr, start = read_excerpt(track, clip)
    if clip.mono:
        x = x.mean(axis=1, keepdims=True)
    fade(x, sr)
    if clip.subtype == "OPUS" and sr not in OPUS_RATES:
        raise CorpusError(f"{track.rel} ({clip.package}) is {sr} Hz; Opus takes {OPUS_RATES}: pick a 48 kHz "
                          "source for the Opus clip in scripts/corpus/small.py")
    path = os.path.join(out, clip.filename())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, sr, format=clip.format, subtype=clip.subtype)
    facts = records.audio_facts(path, out)
    return records.recording_record(facts, track, BY_NAME[clip.package].license, offset_s=start)


def find_track(tracks: list[Track], clip: Clip) -> Track:
    for t in tracks:
        if t.rel.endswith(clip.suffix):
            return t
    raise CorpusError(f"{clip.package} has no track ending in {clip.suffix!r}; the package changed: pick "
                      "another track for this clip in scripts/corpus/small.py")


def build_small(cache: str, out: str, sf2: str, sf_name: str, soundfont_package: str) -> list[dict]:
    """Write the small corpus into `out`; returns its records (sorted by file)."""
    packages = small_packages()
    debian.download(cache, packages)
    tracks = {p: scan_package(cache, p) for p in packages}
    recs = []
    for clip in CLIPS:
        recs.append(write_clip(find_track(tracks[clip.package], clip), clip, out))
        debian.log(f"  small: {recs[-1]['file']}  {recs[-1]['duration_s']:.1f}s")
    for r in run_renders(render_jobs(out, sf2, sf_name), 2):
        if not r["ok"]:
            raise CorpusError(f"rendering {r['corpus_path']} failed: {r.get('err')}; see scripts/corpus/score_job.py")
        recs.append(records.render_record(records.audio_facts(r["out"], out), r,
                                          records.small_render_license(sf_name)))
        debian.log(f"  small: {recs[-1]['file']}  {recs[-1]['duration_s']:.1f}s")
    recs.sort(key=lambda r: r["file"])
    records.write_jsonl(os.path.join(out, "captions.jsonl"), recs)
    debian.copy_licenses(cache, packages + [soundfont_package], out)
    return recs
