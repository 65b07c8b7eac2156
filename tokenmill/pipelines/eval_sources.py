"""`evaluate` inputs: resolve a SPEC into clip sources at launch, and load clips on the workers.

SPEC is one of
  * a MusicCaps-format CSV (`*.csv`): one clip per row, key = ytid, audio = the one file `{ytid}.*`
    in the audio folder (`--generated_audio` / `--reference_audio`; default: the CSV's folder), cut
    to [start_s, end_s) when the file is longer (eval/clips.py). A row without its file is a dead
    letter (stage "match", reason "missing").
  * a tokenmill dataset directory (holds manifest.json): every record of its Parquet shards,
    decoded from its acoustic codes through the codec it was tokenized with (weights hash checked;
    `--levels N` decodes the first N levels only); key = the source file's stem, with `#SEGMENT`
    for segments after the first.
  * a glob of audio files: key = the file's stem (two files with one stem are refused).
Clips pair across the two sides by key; `--captions CSV` adds captions and aspects by key (ytid).

Captions are data: the launcher checks that each captions file parses (and takes the zero-shot
vocabulary from it), but the job reads the rows itself (ReadCaptionRows, on a worker) and LoadClips
takes them as an AsDict side input keyed by ytid; the graph holds only the files' paths, so its size
does not depend on the number of captions. A CSV SPEC's clip sources hold no caption either: LoadClips
finds the clip's own row in the same side input.
"""
from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field, replace

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from tokenmill.eval import EvalError
from tokenmill.eval.clips import load_clip, resample_all
from tokenmill.eval.musiccaps import CaptionRow, parse_rows
from tokenmill.pipelines.ingest import DEAD, Progress, dead_letter
from tokenmill.schemas.records import MANIFEST_NAME
from tokenmill.schemas.shards import DeadLetter

LOG = logging.getLogger("tokenmill")


@dataclass(frozen=True)
class ClipSource:
    side: str  # "generated" | "reference"
    key: str  # pairing key (ytid / file stem); a dataset shard's element has its shard path here
    uri: str
    kind: str  # "file" | "shard"
    start_s: float | None = None
    end_s: float | None = None
    caption: str | None = None
    aspects: tuple[str, ...] = ()
    dataset: str | None = None  # kind "shard": the dataset root


@dataclass(frozen=True)
class ClipAudio:
    side: str
    key: str
    uri: str
    caption: str | None
    aspects: tuple[str, ...]
    duration_s: float
    waves: dict = field(default_factory=dict)  # rate_hz -> float32 [n]


@dataclass(frozen=True)
class Resolved:
    spec: str
    kind: str  # "csv" | "dataset" | "glob"
    sources: tuple[ClipSource, ...]
    dead: tuple[DeadLetter, ...]  # rows without audio
    rows: tuple[CaptionRow, ...] = ()  # CSV SPECs: read at launch (vocabulary); never put into the job
    n_records: int | None = None  # datasets: records listed by the manifest


@dataclass(frozen=True)
class CaptionFiles:
    """The caption files the job reads and joins, in precedence order (`--captions` first, then the
    CSV SPECs of the generated and the reference side); `own`: side → index in `paths` of that
    side's CSV SPEC, whose row of a clip comes before any other."""
    paths: tuple[str, ...] = ()
    own: dict = field(default_factory=dict)  # side -> index into paths


def caption_files(captions: str | None, sides: dict[str, Resolved]) -> CaptionFiles:
    """Which files hold the captions of the job (paths only: nothing is read here)."""
    paths: list[str] = [captions] if captions else []
    own = {}
    for side, r in sides.items():
        if r.kind == "csv":
            if r.spec not in paths:
                paths.append(r.spec)
            own[side] = paths.index(r.spec)
    return CaptionFiles(tuple(paths), own)


def _read_text(path: str) -> str:
    try:
        with FileSystems.open(path) as f:
            return f.read().decode("utf-8-sig")
    except (OSError, IOError) as e:
        raise EvalError(f"cannot read {path} ({e}); check the path") from e
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from e


def read_caption_rows(path: str) -> list[CaptionRow]:
    return parse_rows(_read_text(path), path)


def _stem(path: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    return name.rsplit(".", 1)[0] if "." in name else name


def _resolve_csv(spec: str, side: str, audio_dir: str | None) -> Resolved:
    rows = read_caption_rows(spec)
    folder = (audio_dir or posixpath.dirname(spec) or ".").rstrip("/")
    files: dict[str, list[str]] = {}
    for m in FileSystems.match([f"{folder}/*"])[0].metadata_list:
        if not m.path.endswith(".csv"):
            files.setdefault(_stem(m.path), []).append(m.path)
    sources, dead = [], []
    for r in rows:
        found = sorted(files.get(r.ytid, []))
        if len(found) > 1:
            raise EvalError(f"{folder}: {len(found)} files for ytid {r.ytid} ({', '.join(found)}); keep one")
        if not found:
            dead.append(DeadLetter(uri=f"{folder}/{r.ytid}.*", stage="match", error="EvalError", reason="missing",
                                   message=f"{spec}: no audio file {r.ytid}.* in {folder}; download it or drop the "
                                           "row", key=r.ytid))
            continue
        # no caption here: LoadClips joins the row again on a worker (CaptionFiles.own)
        sources.append(ClipSource(side, r.ytid, found[0], "file", r.start_s, r.end_s))
    if not sources:
        raise EvalError(f"{spec}: none of its {len(rows)} rows has a file {{ytid}}.* in {folder}; pass the audio "
                        f"folder with --{side}_audio DIR")
    return Resolved(spec, "csv", tuple(sources), tuple(dead), tuple(rows))


def _resolve_dataset(spec: str, side: str) -> Resolved:
    import json

    root = spec.rstrip("/")
    with open(os.path.join(root, MANIFEST_NAME)) as f:
        manifest = json.load(f)
    if (manifest.get("tokenizers") or {}).get("acoustic") is None:
        raise EvalError(f"{root} has no acoustic stream to decode; tokenize it with --acoustic_codec")
    shards = [s for s in manifest["shards"] if s["format"] == "parquet"]
    if not shards:
        raise EvalError(f"{root} lists no Parquet shards; evaluate reads records from Parquet")
    return Resolved(spec, "dataset", tuple(ClipSource(side, s["path"], os.path.join(root, s["path"]), "shard",
                                                      dataset=root) for s in shards),
                    (), (), sum(int(s["records"]) for s in shards))


def _resolve_glob(spec: str, side: str) -> Resolved:
    matched = sorted(m.path for m in FileSystems.match([spec])[0].metadata_list)
    if not matched:
        raise EvalError(f"--{side} {spec!r} matched no files; check the path, and quote the glob so the shell "
                        "does not expand it")
    by_key: dict[str, str] = {}
    for p in matched:
        k = _stem(p)
        if k in by_key:
            raise EvalError(f"--{side}: {by_key[k]} and {p} have the same key {k!r} (file stem); clips pair by "
                            "stem, so each must be unique")
        by_key[k] = p
    return Resolved(spec, "glob", tuple(ClipSource(side, k, p, "file") for k, p in by_key.items()), ())


def resolve_spec(spec: str, side: str, audio_dir: str | None = None) -> Resolved:
    """The clip sources of one side (module docstring). Raises EvalError with the fix."""
    if spec.endswith(".csv"):
        return _resolve_csv(spec, side, audio_dir)
    if "://" not in spec and os.path.isfile(os.path.join(spec, MANIFEST_NAME)):
        return _resolve_dataset(spec, side)
    if os.path.isdir(spec):
        raise EvalError(f"--{side} {spec}: a directory without {MANIFEST_NAME}; pass a glob such as "
                        f"'{spec.rstrip('/')}/*.wav', a tokenmill dataset, or a MusicCaps-format CSV")
    return _resolve_glob(spec, side)


def record_key(uri: str, segment: int) -> str:
    return _stem(uri) if segment == 0 else f"{_stem(uri)}#{segment}"


def _ranked_rows(rank_path: tuple[int, str]):
    rank, path = rank_path
    for r in read_caption_rows(path):
        yield r.ytid, (rank, r)


class ReadCaptionRows(beam.PTransform):
    """Caption file paths (precedence order) → (ytid, ((rank, CaptionRow), ...) by rank): each file is
    read and parsed on a worker (the parser the launcher checked it with), so the graph carries the
    paths only, whatever the number of rows. LoadClips takes the result as an AsDict side input."""

    def __init__(self, paths: tuple[str, ...]):
        super().__init__()
        self.paths = tuple(paths)

    def expand(self, pbegin):
        return (pbegin | "Paths" >> beam.Create(list(enumerate(self.paths)))
                | "Parse" >> beam.FlatMap(_ranked_rows)
                | "ByYtid" >> beam.GroupByKey()
                | "Rank" >> beam.MapTuple(lambda ytid, rows: (ytid, tuple(sorted(rows, key=lambda kr: kr[0])))))


def load_clips(p: beam.Pipeline, sources, rates_hz: tuple[int, ...], captions: CaptionFiles | None,
               levels: int | None, acoustic_model: str | None):
    """Sources → LoadClips with the captions joined inside the job; → outputs (clips, DEAD)."""
    captions = captions or CaptionFiles()
    side = {}
    if captions.paths:
        side["captions"] = beam.pvalue.AsDict(p | "Captions" >> ReadCaptionRows(captions.paths))
    return (p | "Sources" >> beam.Create(list(sources)) | "Spread" >> beam.Reshuffle()
            | "Load" >> beam.ParDo(LoadClips(rates_hz, captions.own, levels, acoustic_model), **side).with_outputs(
                DEAD, main="clips"))


class LoadClips(beam.DoFn):
    """ClipSource → ClipAudio per clip (waves at every rate the models need), or (side, DeadLetter)
    on the 'dead' output. Captions come as a side input (ReadCaptionRows: ytid → rows by rank),
    never as a field of this DoFn. A CSV SPEC's clip takes its own row's caption and aspects (side
    → rank in `own`); a caption or aspects it lacks come from the first row of its key (--captions
    first, then the CSV SPECs, generated before reference)."""

    def __init__(self, rates_hz: tuple[int, ...], own: dict[str, int], levels: int | None,
                 acoustic_model: str | None):
        self.rates_hz, self.own, self.levels, self.acoustic_model = rates_hz, dict(own), levels, acoustic_model
        self.n_loaded = beam.metrics.Metrics.counter("tokenmill", "eval_clips_loaded")
        self.n_dead = beam.metrics.Metrics.counter("tokenmill", "eval_clips_dead_load")

    def setup(self):
        self.progress = Progress("evaluate: load")
        self.codecs = {}

    def finish_bundle(self):
        self.progress.report()

    def _clip(self, src: ClipSource, key: str, uri: str, waves: dict, duration_s: float, captions) -> ClipAudio:
        ranked = (captions or {}).get(key, ())
        row = ranked[0][1] if ranked else None
        caption, aspects = src.caption, src.aspects
        if src.kind == "file" and src.side in self.own:  # a CSV SPEC's clip: its own row
            own = next((r for rank, r in ranked if rank == self.own[src.side]), None)
            caption, aspects = (own.caption, own.aspects) if own else (None, ())
        caption = caption if caption is not None else (row.caption if row else None)
        aspects = aspects or (row.aspects if row else ())
        self.n_loaded.inc()
        self.progress.tick(audio_s=duration_s)
        return ClipAudio(src.side, key, uri, caption, tuple(aspects), duration_s, waves)

    def _dead(self, src: ClipSource, uri: str, stage: str, e: Exception, key: str | None):
        self.n_dead.inc()
        self.progress.tick(dead=True)
        return beam.pvalue.TaggedOutput(DEAD, (src.side, dead_letter(uri, stage, e, key=key)))

    def process(self, src: ClipSource, captions: dict | None = None):
        if src.kind == "file":
            try:
                with FileSystems.open(src.uri) as f:
                    data = f.read()
                waves, dur = load_clip(data, src.uri, self.rates_hz, src.start_s, src.end_s)
            except Exception as e:  # noqa: BLE001 — the clip's dead letter
                yield self._dead(src, src.uri, "load", e, src.key)
                return
            yield self._clip(src, src.key, src.uri, waves, dur, captions)
            return
        yield from self._shard(src, captions)

    def _codec(self, root: str):
        from tokenmill.tokenizers.codec import rebuild_codec
        from tokenmill.training.listen import load_manifest

        if root not in self.codecs:
            m = load_manifest(root)
            self.codecs[root] = rebuild_codec(m["job"].get("acoustic"), m["tokenizers"]["acoustic"],
                                              self.acoustic_model, where=root)
        return self.codecs[root]

    def _shard(self, src: ClipSource, captions: dict | None):
        from tokenmill.schemas import shards
        from tokenmill.training.listen import load_manifest

        try:
            codec = self._codec(src.dataset)
            records = list(shards._iter_shards(src.dataset, [e for e in load_manifest(src.dataset)["shards"]  # noqa: SLF001
                                                             if e["path"] == src.key],
                                               load_manifest(src.dataset), verify_checksums=True))
        except Exception as e:  # noqa: BLE001 — the shard cannot be read or its codec rebuilt: stop, naming it
            raise EvalError(f"{src.uri}: cannot read this shard of {src.dataset} or rebuild its codec ({e})") from e
        for rec in records:
            key = record_key(rec.uri, rec.segment)
            try:
                if rec.acoustic is None:
                    raise EvalError(f"{rec.uri} segment {rec.segment}: the record has no acoustic tokens to decode")
                codes = rec.acoustic if self.levels is None else rec.acoustic[: self.levels]
                wave = codec.decode(codes)
                waves = resample_all(np.asarray(wave, np.float32), codec.sample_rate_hz, self.rates_hz, rec.uri)
            except Exception as e:  # noqa: BLE001
                yield self._dead(src, rec.uri, "decode-tokens", e, key)
                continue
            yield self._clip(replace(src, caption=rec.caption, aspects=tuple(rec.tags or ())), key, rec.uri,
                             waves, len(wave) / codec.sample_rate_hz, captions)
