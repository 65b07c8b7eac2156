"""Ingest: match files through Beam FileSystems, read, decode, resample, segment.

Every matched file leaves this stage either as segments or as a dead letter; nothing is dropped.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from tokenmill.errors import UsageError
from tokenmill.schemas.manifest import uri_digest, digest_add
from tokenmill.schemas.shards import DeadLetter
from tokenmill.tokenizers import audio

LOG = logging.getLogger("tokenmill")
DEAD = "dead"


@dataclass(frozen=True)
class SegmentInput:
    """One segment on its way to the models: metadata plus the waves the models need."""

    key: str
    uri: str
    segment: int
    start_s: float
    duration_s: float
    n_quanta: int
    source_sample_rate: int
    source_channels: int
    waves: dict  # rate_hz -> float32 [n]; dropped once the models that need them have run
    tokens: dict = field(default_factory=dict)  # stream -> codes computed so far
    n_segments: int = 1  # how many segments the source decoded into (pipelines/journal.py)

    @property
    def source_hash(self) -> str:
        return self.key.split("-", 1)[0]


class DuplicateContent(Exception):
    """An input whose decoded audio (content hash) is already kept under another uri."""

    reason = "duplicate"


# Beam counters (namespace "tokenmill"), reconciled with the manifest by tests/test_metrics.py.
DEAD_LETTERS = beam.metrics.Metrics.counter("tokenmill", "dead_letters")

_OBJECT_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def dead_letter(uri: str, stage: str, exc: BaseException, key: str | None = None) -> DeadLetter:
    """A DeadLetter for `exc`. Memory addresses in library messages ("<_io.BytesIO object at
    0x7f..>") are removed so the failures file is byte-identical across runs."""
    reason = getattr(exc, "reason", None) or "unexpected-error"
    message = _OBJECT_ADDRESS.sub(r"<\1>", str(exc) or repr(exc))
    DEAD_LETTERS.inc()  # in a pipeline: counted where the letter is made (a no-op outside one)
    return DeadLetter(uri=uri, stage=stage, error=type(exc).__name__, reason=reason,
                      message=message, key=key)


class Progress:
    """Throttled progress lines on the 'tokenmill' logger (one per `every_s` per worker), the one
    line every long phase prints: `[label] N <unit>, M min audio, D dead letters, Xx real time`.
    Decode counts files; model stages (tokenize, fit-codebook) and rebuild count segments."""

    def __init__(self, label: str, every_s: float = 5.0, unit: str = "files"):
        self.label, self.every_s, self.unit = label, every_s, unit
        self.files = self.dead = 0
        self.audio_s = 0.0
        self._t0 = self._last = None

    def tick(self, audio_s: float = 0.0, dead: bool = False) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = self._last = now
        self.files += 1
        self.dead += int(dead)
        self.audio_s += audio_s
        if now - self._last >= self.every_s:
            self._last = now
            self.report()

    def report(self) -> None:
        if self._t0 is None:
            return
        el = max(time.monotonic() - self._t0, 1e-9)
        LOG.info("[%s] %d %s, %.1f min audio, %d dead letters, %.0fx real time (this worker)",
                 self.label, self.files, self.unit, self.audio_s / 60, self.dead, self.audio_s / el)


class DecodeToSegments(beam.DoFn):
    """ReadableFile → SegmentInput per segment, or a DeadLetter on the 'dead' output."""

    def __init__(self, cfg: audio.AudioConfig):
        self.cfg = cfg
        self.n_files = beam.metrics.Metrics.counter("tokenmill", "files_read")
        self.n_dead = beam.metrics.Metrics.counter("tokenmill", "files_dead_decode")
        self.n_segments = beam.metrics.Metrics.counter("tokenmill", "segments")
        self.n_decoded = beam.metrics.Metrics.counter("tokenmill", "files_decoded")
        self.ms_decoded = beam.metrics.Metrics.counter("tokenmill", "audio_ms_decoded")

    def setup(self):
        self.progress = Progress("decode")

    def finish_bundle(self):
        self.progress.report()

    def process(self, readable: fileio.ReadableFile):
        uri = readable.metadata.path
        self.n_files.inc()
        try:
            data = readable.read()
        except Exception as e:  # noqa: BLE001 — any I/O failure becomes a dead letter
            self.n_dead.inc()
            self.progress.tick(dead=True)
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(uri, "read", e))
            return
        try:
            segments = audio.prepare(data, uri, self.cfg)
        except Exception as e:  # noqa: BLE001 — typed AudioErrors carry a reason; others are 'unexpected-error'
            self.n_dead.inc()
            self.progress.tick(dead=True)
            if not isinstance(e, audio.AudioError):
                LOG.warning("unexpected %s decoding %s: %s", type(e).__name__, uri, e)
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(uri, "decode", e))
            return
        self.progress.tick(audio_s=sum(s.duration_s for s in segments))
        self.n_decoded.inc()
        self.ms_decoded.inc(round(1000 * sum(s.duration_s for s in segments)))
        LOG.debug("[decode] %s: %d segment(s), %.1f s", uri, len(segments), sum(s.duration_s for s in segments))
        for s in segments:
            self.n_segments.inc()
            yield SegmentInput(
                key=s.key, uri=uri, segment=s.segment, start_s=s.start_s, duration_s=s.duration_s,
                n_quanta=s.n_quanta, source_sample_rate=s.source_sample_rate,
                source_channels=s.source_channels, waves=dict(s.waves), n_segments=len(segments))


@dataclass(frozen=True)
class InputListing:
    """What the launcher's match of the inputs found: distinct files and their bytes per
    lower-case extension (schemas/shard_plan.py sizes the shards from it)."""

    n_files: int
    bytes_by_ext: dict


def list_inputs(patterns: tuple[str, ...]) -> InputListing:
    """Match every pattern through Beam FileSystems once (sizes come with the listing; no file is
    opened); fail fast on a pattern that matches nothing. A path matched by two patterns counts
    once, as ReadAndDecode reads it once."""
    from tokenmill.schemas.shard_plan import extension

    n, by_ext, seen = 0, {}, set() if len(patterns) > 1 else None
    for pattern in patterns:
        result = FileSystems.match([pattern])[0]
        if not result.metadata_list:
            raise UsageError(f"--input {pattern!r} matched no files; check the path or quote the "
                             "glob so the shell does not expand it")
        for m in result.metadata_list:
            if seen is not None:
                if m.path in seen:
                    continue
                seen.add(m.path)
            n += 1
            ext = extension(m.path)
            by_ext[ext] = by_ext.get(ext, 0) + int(m.size_in_bytes)
    return InputListing(n, dict(sorted(by_ext.items())))


def check_inputs_match(patterns: tuple[str, ...]) -> int:
    """Fail fast, before the job starts, on a pattern that matches nothing; return the count."""
    return list_inputs(patterns).n_files


class UriDigestFn(beam.CombineFn):
    """(count, order-free digest) of a PCollection of uris; see manifest.uri_digest."""

    def create_accumulator(self):
        return (0, uri_digest([]))

    def add_input(self, acc, uri):
        return (acc[0] + 1, digest_add(acc[1], uri_digest([uri])))

    def merge_accumulators(self, accs):
        n, d = 0, uri_digest([])
        for a_n, a_d in accs:
            n, d = n + a_n, digest_add(d, a_d)
        return (n, d)

    def extract_output(self, acc):
        return acc


class SkipPresent(beam.DoFn):
    """FileMetadata → itself, unless its path is in `skip` (already in the dataset, `--into`):
    then it goes to the 'skipped' output as its path, counted, and is never read."""

    def __init__(self, skip: frozenset[str]):
        self.skip = skip
        self.n_skipped = beam.metrics.Metrics.counter("tokenmill", "files_skipped_present")

    def process(self, m):
        if m.path in self.skip:
            self.n_skipped.inc()
            yield beam.pvalue.TaggedOutput("skipped", m.path)
        else:
            yield m


class ReadAndDecode(beam.PTransform):
    """patterns → (segments, dead letters, (input count, input digest) singleton).

    With `skip` (a set of uris, `tokenize --into`), matched files whose path is in it are not
    read and not inputs of this run; a fourth output then holds their count (a singleton)."""

    def __init__(self, patterns: tuple[str, ...], cfg: audio.AudioConfig,
                 skip: frozenset[str] | None = None):
        super().__init__()
        self.patterns, self.cfg, self.skip = patterns, cfg, skip

    def expand(self, pbegin):
        matched = (
            pbegin
            | "Patterns" >> beam.Create(list(self.patterns))
            | "Match" >> fileio.MatchAll()
            # One file can match two patterns; count and read it once.
            | "ByPath" >> beam.Map(lambda m: (m.path, m))
            | "DistinctPath" >> beam.CombinePerKey(lambda ms: next(iter(ms)))
            | "Metadata" >> beam.Values()
        )
        skipped = None
        if self.skip is not None:
            split = matched | "SkipPresent" >> beam.ParDo(SkipPresent(self.skip)).with_outputs(
                "skipped", main="new")
            matched = split.new
            skipped = split.skipped | "CountSkipped" >> beam.combiners.Count.Globally()
        matched = matched | "Spread" >> beam.Reshuffle()
        inputs = (matched | "Uri" >> beam.Map(lambda m: m.path)
                  | "InputDigest" >> beam.CombineGlobally(UriDigestFn()))
        decoded = (
            matched
            | "Read" >> fileio.ReadMatches()
            | "Decode" >> beam.ParDo(DecodeToSegments(self.cfg)).with_outputs(DEAD, main="segments")
        )
        if skipped is not None:
            return decoded.segments, decoded[DEAD], inputs, skipped
        return decoded.segments, decoded[DEAD], inputs


def frames_priority(key: str, n_frames: int, seed: int) -> np.ndarray:
    """uint64 priority per frame from (seed, key, frame index): the deterministic sample order."""
    import hashlib

    base = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
    idx = np.arange(n_frames, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = idx * np.uint64(0x9E3779B97F4A7C15) + np.uint64(base)
        # splitmix64 finaliser: a bijection, so priorities never collide within a track
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x
