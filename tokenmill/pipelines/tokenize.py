"""The `tokenize` job: audio files → acoustic, MuLan, melody, semantic tokens → Parquet + WebDataset + manifest.

    match ─► read/decode/segment ─► RunInference: acoustic ─► mulan ─► melody ─► semantic ─► dedupe
                 │ dead                           │ dead    │ dead    │ dead        │ dead (dups)
                 │                                                    captions, split │
                 └──────────────► failures-*.jsonl ◄──────────────┘      shards (f(key))
                                        └──────────────► manifest.json ◄─────────┘

Each model stage drops the waves no later stage needs (the codec's 24 kHz, MuLan's rate when it
is not 16 kHz), so segments shuffled later carry 16 kHz audio at most; the MuLan stage's handler
is in pipelines/mulan.py, the melody stage's in pipelines/melody.py. Deduplication happens after inference, on tokens: shuffling tokens is
~1000× cheaper than shuffling decoded audio, and exact duplicates are rare, so their wasted
inference costs less.
"""
from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from tokenmill.errors import UsageError
from tokenmill import __version__
from tokenmill.pipelines.handlers import AcousticTokenHandler, Failed, SemanticTokenHandler
from tokenmill.pipelines.entries import PendingRecord, TokenRef
from tokenmill.pipelines.incremental import KnownContent, Plan, WriteIncrementalManifest
from tokenmill.pipelines.journal import Journal, JournalDead, JournalPlan, JournalSegment, ReadJournal
from tokenmill.pipelines.ingest import DEAD, DuplicateContent, Progress, ReadAndDecode, SegmentInput, dead_letter
from tokenmill.pipelines.melody import MelodyTokenHandler, melody_stream_info
from tokenmill.pipelines.mulan import MulanTokenHandler, mulan_stream_info
from tokenmill.pipelines.configs import TokenizeConfig
from tokenmill.pipelines.sinks import WriteShards, atomic_write, write_dead_letters
from tokenmill.schemas import manifest as mf
from tokenmill.schemas import rates
from tokenmill.schemas.captions import CaptionIndex
from tokenmill.schemas.records import MANIFEST_NAME, TrackRecord, split_of

LOG = logging.getLogger("tokenmill")


class AttachTokens(beam.DoFn):
    """(key, PredictionResult) → the SegmentInput with `tokens[stream]` set (uint16 codes), or with
    every field of a dict result set (MuLan: mulan_windows + mulan, dtypes as given), and the waves
    no later model needs dropped; or a dead letter naming the stream's stage."""

    def __init__(self, stream: str, keep_rates: tuple[int, ...]):
        self.stream, self.keep_rates = stream, keep_rates

    def setup(self):
        self.progress = Progress(self.stream, unit="segments")  # this model stage's throughput

    def finish_bundle(self):
        self.progress.report()

    def process(self, element):
        key, result = element
        seg = result.example
        self.progress.tick(audio_s=seg.duration_s, dead=isinstance(result.inference, Failed))
        if isinstance(result.inference, Failed):
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(seg.uri, self.stream, result.inference.exc, key))
            return
        inf = result.inference
        fields = inf if isinstance(inf, dict) else {self.stream: np.asarray(inf, dtype=np.uint16)}
        yield dataclasses.replace(
            seg, waves={r: w for r, w in seg.waves.items() if r in self.keep_rates},
            tokens={**seg.tokens, **fields})


def by_source(seg: SegmentInput):
    """Key a fully tokenized segment by its source hash (for dedupe), without its audio."""
    meta = {k: getattr(seg, k) for k in ("key", "uri", "segment", "start_s", "duration_s",
                                          "source_sample_rate", "source_channels")}
    return seg.source_hash, (meta, seg.tokens)


def failed_batch_letters(element, stream: str):
    """A batch that failed as a whole (e.g. out of memory): one dead letter per element."""
    batch, exc = element
    for key, seg in batch:
        yield dead_letter(seg.uri, stream, exc, key)


class ModelStage(beam.PTransform):
    """RunInference for one stream, with per-element and per-batch failures as dead letters."""

    def __init__(self, stream: str, handler, keep_rates: tuple[int, ...]):
        super().__init__()
        self.stream, self.handler, self.keep_rates = stream, handler, keep_rates

    def expand(self, segments):
        main, other = (segments | "Key" >> beam.Map(lambda s: (s.key, s))
                       | "Infer" >> RunInference(KeyedModelHandler(self.handler)).with_exception_handling())
        out = main | "Attach" >> beam.ParDo(AttachTokens(self.stream, self.keep_rates)).with_outputs(DEAD, main="ok")
        batch_dead = other.failed_inferences | "BatchDead" >> beam.FlatMap(failed_batch_letters, self.stream)
        dead = (out[DEAD], batch_dead) | "Dead" >> beam.Flatten()
        return out.ok, dead


TOKEN_FIELDS = ("acoustic", "mulan", "melody", "semantic")  # record fields counted as tokens_<field> (not *_windows)


class DedupeAndBuild(beam.DoFn):
    """(source_hash, [(meta, tokens)]) → TrackRecords of one canonical uri (the smallest); the
    other uris with the same decoded audio become 'duplicate' dead letters. Journaled tokens (a
    TokenRef) become PendingRecords, loaded by the shard writer (pipelines/entries.py). Captions
    come as a side input (the CaptionIndex that ReadCaptions builds on a worker), never as a
    field of this DoFn, so the job graph does not grow with the captions file."""

    def __init__(self, cfg: TokenizeConfig):
        self.cfg = cfg
        self.n_dup = beam.metrics.Metrics.counter("tokenmill", "duplicates")
        self.n_records = beam.metrics.Metrics.counter("tokenmill", "records")
        self.ms_records = beam.metrics.Metrics.counter("tokenmill", "record_audio_ms")
        self.n_tokens = {f: beam.metrics.Metrics.counter("tokenmill", f"tokens_{f}") for f in TOKEN_FIELDS}

    def process(self, element, captions: CaptionIndex | None = None):
        source_hash, items = element
        by_uri: dict[str, list] = {}
        for meta, tokens in items:
            by_uri.setdefault(meta["uri"], []).append((meta, tokens))
        keep, *dups = sorted(by_uri)
        for dup in dups:
            self.n_dup.inc()
            exc = DuplicateContent(f"{dup} decodes to the same audio as {keep} (content hash "
                                   f"{source_hash}); only {keep} is kept")
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(dup, "dedupe", exc))
        for meta, tokens in sorted(by_uri[keep], key=lambda mt: mt[0]["segment"]):
            cap = captions.lookup(key=meta["key"], uri=keep) if captions else None
            self.n_records.inc()
            self.ms_records.inc(round(1000 * meta["duration_s"]))
            fields = {**meta, "split": split_of(meta["key"], self.cfg.valid_fraction),
                      "caption": cap.caption if cap else None, "tags": cap.tags if cap else None}
            if isinstance(tokens, TokenRef):  # journaled (full runs): the shard writer loads them
                sizes = dict(tokens.sizes)
                yield PendingRecord.of(fields, tokens)
            else:
                sizes = {f: int(np.size(codes)) for f, codes in tokens.items()}
                yield TrackRecord(**fields, **tokens)
            for f, n in sizes.items():
                if f in self.n_tokens:
                    self.n_tokens[f].inc(n)


class Accounting(beam.CombineFn):
    """(uri, has_record) → counts of sources with records / dead only, plus their uri digest."""

    def create_accumulator(self):
        return {"sources_in_records": 0, "sources_dead_only": 0, "digest": mf.uri_digest([])}

    def add_input(self, acc, uri_has_record):
        uri, has_record = uri_has_record
        acc["sources_in_records" if has_record else "sources_dead_only"] += 1
        acc["digest"] = mf.digest_add(acc["digest"], mf.uri_digest([uri]))
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["sources_in_records"] += a["sources_in_records"]
            out["sources_dead_only"] += a["sources_dead_only"]
            out["digest"] = mf.digest_add(out["digest"], a["digest"])
        return out

    def extract_output(self, acc):
        return acc


class WriteManifest(beam.DoFn):
    def __init__(self, cfg: TokenizeConfig, tokenizers: dict, codebooks: dict, streams: dict,
                 compute_entry: dict | None = None):
        self.cfg, self.tokenizers, self.codebooks, self.streams = cfg, tokenizers, codebooks, streams
        self.compute_entry = compute_entry

    def process(self, _, shards, dead, inputs, accounting):
        dead_info, letters = dead
        n_inputs, inputs_digest = inputs
        if accounting["digest"] != inputs_digest or n_inputs != (
                accounting["sources_in_records"] + accounting["sources_dead_only"]):
            raise RuntimeError(
                f"accounting failed: {n_inputs} inputs but {accounting['sources_in_records']} "
                f"sources in records + {accounting['sources_dead_only']} dead only, or the uri sets "
                "differ; an input was lost, please report this as a tokenmill bug")
        by_stage, by_reason = {}, {}
        for d in letters:
            by_stage[d.stage] = by_stage.get(d.stage, 0) + 1
            by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
        first_format = self.cfg.formats[0]
        counts = mf.Counts(
            inputs=n_inputs, sources_in_records=accounting["sources_in_records"],
            sources_dead_only=accounting["sources_dead_only"], dead_letters=len(letters),
            records=sum(s.records for s in shards if s.format == first_format),
            seconds=round(sum(s.seconds for s in shards if s.format == first_format), 6),
            inputs_digest=inputs_digest, dead_by_stage=dict(sorted(by_stage.items())),
            dead_by_reason=dict(sorted(by_reason.items())))
        job = {k: v for k, v in self.cfg.to_json().items() if k != "output"}
        manifest = mf.build_manifest(
            job=job, tokenizers=self.tokenizers, codebooks=self.codebooks, streams=self.streams,
            shards=list(shards), dead_letter_files=[dead_info], counts=counts,
            tokenmill_version=__version__, compute=self.compute_entry)
        atomic_write(f"{self.cfg.output.rstrip('/')}/{MANIFEST_NAME}", mf.dumps(manifest))
        yield manifest


def semantic_stream_info(vocab_size: int, extractor: dict | None = None) -> dict:
    """The semantic stream's manifest entry; `extractor` (its describe()) adds which features the
    tokens quantize: extractor name, dim, and for SSL models the weights sha256 and layer."""
    info = {"sample_rate_hz": rates.SEMANTIC.sample_rate_hz, "hop_samples": rates.SEMANTIC.hop_samples,
            "frame_rate_hz": float(rates.SEMANTIC.frame_rate_hz), "vocab_size": vocab_size,
            "dtype": "uint16", "shape": "[T_s]"}
    if extractor is not None:
        info.update(extractor=extractor["name"], feature_dim=extractor["dim"],
                    weights_sha256=extractor.get("weights_sha256"), layer=extractor.get("layer"))
    return info


def acoustic_stream_info(desc: dict) -> dict:
    keys = ("sample_rate_hz", "hop_samples", "frame_rate_hz", "n_q", "codebook_size",
            "coarse_levels", "fine_levels")
    return {**{k: desc[k] for k in keys}, "vocab_size": desc["codebook_size"], "dtype": "uint16",
            "shape": "[n_q, T_a]", "frames": "ceil(duration_s * sample_rate_hz / hop_samples)"}


def manifest_entries(semantic_desc: dict, acoustic_desc: dict | None = None,
                     mulan_desc: dict | None = None, melody_desc: dict | None = None) -> tuple[dict, dict, dict]:
    """(streams, tokenizers, codebooks) of the manifest for the models of a run."""
    streams = {"semantic": semantic_stream_info(semantic_desc["vocab_size"], semantic_desc["extractor"])}
    tokenizers = {"semantic": semantic_desc}
    codebooks = {"semantic": semantic_desc["codebook_id"]}
    if acoustic_desc is not None:
        streams["acoustic"] = acoustic_stream_info(acoustic_desc)
        tokenizers["acoustic"] = acoustic_desc
    if mulan_desc is not None:
        streams["mulan"] = mulan_stream_info(mulan_desc)
        tokenizers["mulan"] = mulan_desc
        codebooks["mulan"] = mulan_desc["codebook_id"]
    if melody_desc is not None:
        streams["melody"] = melody_stream_info(melody_desc)
        tokenizers["melody"] = melody_desc
        codebooks["melody"] = melody_desc["codebook_id"]
    return streams, tokenizers, codebooks


def build_tokenize(p: beam.Pipeline, cfg: TokenizeConfig, *, semantic_desc: dict,
                   acoustic_desc: dict | None = None,
                   mulan_desc: dict | None = None, plan: Plan | None = None,
                   journal: Journal | None = None, compute_entry: dict | None = None,
                   melody_desc: dict | None = None) -> beam.PCollection:
    """Wire the job into `p`; returns the PCollection holding the written manifest. With `plan`
    (`--into`, pipelines/incremental.py) the job reads only what the dataset lacks and writes a
    new version of it. With `journal` (full runs, pipelines/journal.py) each source's outcome is
    journaled, and sources an interrupted run finished are taken from the journal, not read; with
    `plan` and `journal` (its spill, journal.open_spill) only the segments' tokens are written
    there, so the shuffles carry references. `compute_entry`: the manifest's `compute` (the layout
    and kernels, tokenizers/compute.describe; with a resumed journal, what the earlier run used).
    Captions (`cfg.captions`, a path) are read and joined inside the job (ReadCaptions).
    `melody_desc` (pipelines/melody.describe_melody) adds the melody stream."""
    present = resumed = None
    if plan is None and journal is not None and journal.finished:
        segments, dead_decode, inputs, _ = p | "Ingest" >> ReadAndDecode(cfg.inputs, cfg.audio, skip=journal.skip)
        resumed = (p | "JournalEntries" >> beam.Create(journal.entries())
                   | "ReadJournal" >> beam.ParDo(ReadJournal()).with_outputs(DEAD, main="items"))
        done = sorted(journal.finished)
        inputs = inputs | "AddResumed" >> beam.Map(
            lambda nd, n, d: (nd[0] + n, mf.digest_add(nd[1], d)), len(done), mf.uri_digest(done))
        dead_parts = [dead_decode]
    elif plan is None:
        segments, dead_decode, inputs = p | "Ingest" >> ReadAndDecode(cfg.inputs, cfg.audio)
        dead_parts = [dead_decode]
    else:
        segments, dead_decode, inputs, skipped = p | "Ingest" >> ReadAndDecode(
            cfg.inputs + plan.retry_patterns(), cfg.audio, skip=plan.skip)
        known = segments | "KnownContent" >> beam.ParDo(KnownContent(plan.base.key_uri)).with_outputs(
            DEAD, "present", main="new")
        segments, present = known.new, known.present
        dead_parts = [dead_decode, known[DEAD]]
    if journal is not None and plan is None:
        segments = segments | "JournalPlan" >> beam.ParDo(JournalPlan(journal.work))
    semantic_hz = rates.SEMANTIC.sample_rate_hz
    mulan_hz = (mulan_desc["model"]["sample_rate_hz"],) if mulan_desc is not None else ()
    if acoustic_desc is not None:
        segments, dead_a = segments | "Acoustic" >> ModelStage(
            "acoustic", AcousticTokenHandler(cfg.acoustic), keep_rates=(semantic_hz, *mulan_hz))
        dead_parts.append(dead_a)
    if mulan_desc is not None:
        segments, dead_m = segments | "Mulan" >> ModelStage(
            "mulan", MulanTokenHandler(cfg.mulan), keep_rates=(semantic_hz,))
        dead_parts.append(dead_m)
    if melody_desc is not None:  # 16 kHz in, the semantic stage's rate: nothing more to keep
        segments, dead_mel = segments | "Melody" >> ModelStage(
            "melody", MelodyTokenHandler(cfg.melody), keep_rates=(semantic_hz,))
        dead_parts.append(dead_mel)
    segments, dead_s = segments | "Semantic" >> ModelStage(
        "semantic", SemanticTokenHandler(cfg.semantic, cfg.codebook), keep_rates=())
    dead_parts.append(dead_s)
    by_src = segments | "BySource" >> beam.Map(by_source)
    if journal is not None:  # from here on tokens travel as references (pipelines/entries.py)
        by_src = by_src | "JournalSegment" >> beam.ParDo(JournalSegment(journal.work))
    if journal is not None and plan is None:  # model outcomes only: dedupe is redone on resume
        dead_parts = [tuple(dead_parts) | "ModelDead" >> beam.Flatten()
                      | "JournalDead" >> beam.ParDo(JournalDead(journal.work))]
        if resumed is not None:
            by_src = (by_src, resumed.items) | "WithResumed" >> beam.Flatten()
            dead_parts.append(resumed[DEAD])
    side = {}
    if cfg.captions:
        side["captions"] = beam.pvalue.AsSingleton(p | "Captions" >> ReadCaptions(cfg.captions))
    built = (by_src | "GroupSource" >> beam.GroupByKey()
             | "Dedupe" >> beam.ParDo(DedupeAndBuild(cfg), **side).with_outputs(DEAD, main="records"))
    dead_parts.append(built[DEAD])
    records = built.records
    shards = records | "Shards" >> WriteShards(cfg, version=plan.version if plan else 0)

    dead = tuple(dead_parts) | "AllDead" >> beam.Flatten()
    streams, tokenizers, codebooks = manifest_entries(semantic_desc, acoustic_desc, mulan_desc, melody_desc)
    if plan is not None:
        status = ((records | "RecUri" >> beam.Map(lambda r: (r.uri, True)),
                   dead | "DeadUri" >> beam.Map(lambda d: (d.uri, False)),
                   present | "PresentUri" >> beam.Map(lambda u: (u, True)))
                  | "Uris" >> beam.Flatten() | "AnyRecord" >> beam.CombinePerKey(any))
        return (p | "Once" >> beam.Create([None])
                | "Manifest" >> beam.ParDo(
                    WriteIncrementalManifest(cfg, plan, __version__, compute_entry), beam.pvalue.AsList(shards),
                    beam.pvalue.AsList(dead), beam.pvalue.AsSingleton(inputs), beam.pvalue.AsList(status),
                    beam.pvalue.AsSingleton(skipped)))
    dead_file = (dead | "DeadList" >> beam.combiners.ToList()
                 | "WriteDead" >> beam.Map(lambda ls: (write_dead_letters(ls, cfg.output), ls)))
    status = ((records | "RecUri" >> beam.Map(lambda r: (r.uri, True)),
               dead | "DeadUri" >> beam.Map(lambda d: (d.uri, False)))
              | "Uris" >> beam.Flatten() | "AnyRecord" >> beam.CombinePerKey(any))
    accounting = status | "Account" >> beam.CombineGlobally(Accounting())

    return (p | "Once" >> beam.Create([None])
            | "Manifest" >> beam.ParDo(
                WriteManifest(cfg, tokenizers, codebooks, streams, compute_entry),
                beam.pvalue.AsList(shards), beam.pvalue.AsSingleton(dead_file),
                beam.pvalue.AsSingleton(inputs), beam.pvalue.AsSingleton(accounting)))


def read_captions(path: str) -> CaptionIndex:
    """Read a captions file through Beam FileSystems (local, gs://, s3://) and parse it
    (schemas/captions.py); a bad file raises CaptionFileError naming the line."""
    from apache_beam.io.filesystems import FileSystems

    from tokenmill.schemas.captions import parse_captions

    with FileSystems.open(path) as f:
        index = parse_captions(f.read(), path)
    LOG.info("captions: %d lookup entries from %s", len(index), path)
    return index


class ReadCaptions(beam.PTransform):
    """path → a one-element PCollection holding its CaptionIndex, read and parsed on a worker: the
    graph carries the path only, whatever the number of captions (the Dedupe step takes the index
    as a side input)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pbegin):
        return pbegin | "Path" >> beam.Create([self.path]) | "Parse" >> beam.Map(read_captions)


def check_captions(path: str) -> int:
    """Fail fast at launch on a missing or unparseable captions file (the job reads it again on a
    worker; nothing parsed here goes into the job). Returns the number of lookup entries."""
    from apache_beam.io.filesystems import FileSystems

    from tokenmill.schemas.captions import CaptionFileError

    if not FileSystems.exists(path):
        raise UsageError(f"--captions {path}: file not found")
    try:
        return len(read_captions(path))
    except CaptionFileError as e:
        raise UsageError(f"--captions: {e}") from e
