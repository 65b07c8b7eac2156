"""The two Beam passes of `rebuild` (pipelines/rebuild.py launches them; docs/design.md §4).

    parent shards ─► ReadShardRecords ─► GroupByKey(key) ─► one record per key, with every
        (shard index, position) it sits at (a record is in one shard per format)
    pass 1  semantic: which frames are in the refit sample and in the drift probe depends on
            (key, frame count) only, so BottomKRows (a global combiner) first selects them from
            the records without any audio; then GroupByKey(uri) ─► only the sources holding
            selected frames are decoded + extracted, and only those rows travel (each such
            source's rows are journaled in _work/p1-<uri hash>.npz) ─► BottomKRows collects
            them in (key, row) order. --input: the sample comes from the matched audio instead
            (every file decoded, each segment's n lowest-priority frames combined). mulan: the
            same combiners over the stored mulan_windows (melody: melody_windows). Both results go to _work/pass1.npz.
    (the launcher refits the codebook, warm-started and aligned: tokenizers/refit.py)
    pass 2  the same read; semantic decodes + extracts again and assigns with the new codebook,
            mulan re-encodes the stored windows; every new token field goes to each place its key
            sits, grouped per parent shard ─► one column shard per parent shard, and beside it in
            _work the shard's drift counts (integers) for the keys whose first place it is.

Workers hold one shard's records, one source's features, and the combiners' ~3k rows (k =
sample_frames or probe_frames), whatever the dataset's size. Every result is a pure function of
the dataset (sorted keys, (priority, key, row) order, integer counts), so any runner and any
worker count writes the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from tokenmill.errors import TokenmillError
from tokenmill.pipelines.ingest import Progress, frames_priority
from tokenmill.pipelines.journal import _after_entry
from tokenmill.pipelines.rebuild_sample import BottomKRows, candidates, selection
from tokenmill.pipelines.sinks import atomic_write
from tokenmill.schemas import shards as fmt
from tokenmill.schemas import versions
from tokenmill.schemas.records import MANIFEST_NAME

LOG = logging.getLogger("tokenmill")
SKIPPED = "skipped"


class RebuildError(TokenmillError, ValueError):
    """A rebuild cannot start or cannot finish consistently; the message names the file and the fix."""


def join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"


def read_bytes(uri: str) -> bytes:
    with FileSystems.open(uri, compression_type="uncompressed") as f:
        return f.read()


# ---------------------------------------------------------------- reading the parent

def read_shard(root: str, entry: dict, manifest: dict) -> list:
    """The records of one listed shard (overrides applied), read through FileSystems and checked
    against the manifest's sha256 (any FileSystems URL: local, gs://, ...)."""
    where = f"{root.rstrip('/')}/{MANIFEST_NAME}"

    def checked(e: dict) -> io.BytesIO:
        path = join(root, e["path"])
        try:
            data = read_bytes(path)
        except (FileNotFoundError, IOError) as ex:
            raise RebuildError(f"{path}: listed in {where} but cannot be read ({ex}); run beam_runner.py "
                               f"verify {root}") from ex
        got = hashlib.sha256(data).hexdigest()
        if got != e.get("sha256"):
            raise fmt.ChecksumError(f"{path}: sha256 {got} but {where} lists {e.get('sha256')}; the file was "
                                    f"modified after it was written. Run beam_runner.py verify {root}")
        return io.BytesIO(data)

    f = checked(entry)
    recs = fmt.decode_parquet(f) if entry["format"] == "parquet" else fmt.decode_wds(f)
    for ov in versions.overrides_for(manifest, entry["path"]):
        keys, cols = versions.decode_column_shard(checked(ov["shard"]), ov["fields"])
        recs = versions.merge_columns(recs, keys, cols, join(root, ov["shard"]["path"]))
    return recs


class ReadShardRecords(beam.DoFn):
    """(shard index, shard entry) → (key, (shard index, position, payload)) per record. payload:
    semantic (uri, old tokens); mulan / melody (stored windows, old tokens)."""

    def __init__(self, root: str, manifest: dict, stream: str):
        self.root, self.stream = root, stream
        self.manifest = {"overrides": manifest.get("overrides") or []}

    def process(self, item):
        i, entry = item
        for pos, r in enumerate(read_shard(self.root, entry, self.manifest)):
            payload = ((r.uri, r.semantic) if self.stream == "semantic"  # mulan / melody: stored windows
                       else (getattr(r, f"{self.stream}_windows"), getattr(r, self.stream)))
            yield r.key, (i, pos, payload)


def first_place(item):
    """(key, [(shard, pos, payload)]) → (key, sorted places, payload of the first place): the
    dataset's records once each (the first shard in manifest order wins, as in a reader)."""
    key, places = item
    places = sorted(places, key=lambda p: (p[0], p[1]))
    return key, [(p[0], p[1]) for p in places], places[0][2]


class ReadParent(beam.PTransform):
    """The parent's records once each: (key, places, payload); `done` shards are still read (a
    key's first place must be known), the caller skips what it need not compute."""

    def __init__(self, root: str, manifest: dict, stream: str):
        super().__init__()
        self.root, self.manifest, self.stream = root, manifest, stream

    def expand(self, pbegin):
        return (pbegin
                | "Shards" >> beam.Create(list(enumerate(self.manifest["shards"])))
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShard" >> beam.ParDo(ReadShardRecords(self.root, self.manifest, self.stream))
                | "ByKey" >> beam.GroupByKey()
                | "Once" >> beam.Map(first_place))


# ---------------------------------------------------------------- semantic features on workers

class SemanticFeatures(beam.DoFn):
    """(uri, [(key, n_frames, payload)]) → (key, features float32 [T, D], payload) for each key,
    from one decode of the source with the dataset's front end; the segment keys and frame counts
    must come out as the dataset's."""

    def __init__(self, scfg, acfg):
        self.scfg, self.acfg = scfg, acfg

    def setup(self):
        from tokenmill.pipelines.handlers import semantic_extractor
        from tokenmill.tokenizers import compute

        compute.apply(self.scfg.compute)
        self.extractor = semantic_extractor(self.scfg)
        self.progress = Progress("rebuild: decode + extract", unit="segments")

    def finish_bundle(self):
        self.progress.report()

    def process(self, item):
        yield from self.features(*item)

    def features(self, uri, wanted):
        from tokenmill.tokenizers import audio

        try:
            segs = {s.key: s for s in audio.prepare(read_bytes(uri), uri, self.acfg)}
        except Exception as e:  # noqa: BLE001 — the message names the file
            raise RebuildError(f"{uri}: cannot be decoded again for the semantic rebuild ({type(e).__name__}: "
                               f"{e}); the semantic stream is recomputed from the sources, so restore the file "
                               "(or rebuild from a dataset whose sources are present)") from e
        for key, n_frames, payload in sorted(wanted, key=lambda w: w[0]):
            if key not in segs:
                raise RebuildError(f"{uri}: decodes to other content now (segment key {key} not produced; got "
                                   f"{sorted(segs)[:3]}); the file changed since tokenize: re-tokenize it")
            f = np.asarray(self.extractor.extract(segs[key].waves[16_000]), dtype=np.float32)
            if f.shape[0] != n_frames:
                raise RebuildError(f"{uri}: {f.shape[0]} semantic frames for {key}, but the dataset holds "
                                   f"{n_frames}; the extractor differs from tokenize's")
            self.progress.tick(audio_s=segs[key].duration_s)
            yield key, f, payload


class InputFeatures(beam.DoFn):
    """uri of a --input file → (priorities, key, rows, features) candidates per segment; an
    undecodable file goes to the 'skipped' output as (uri, reason)."""

    def __init__(self, scfg, acfg, n: int, seed: int):
        self.scfg, self.acfg, self.n, self.seed = scfg, acfg, n, seed

    setup = SemanticFeatures.setup
    finish_bundle = SemanticFeatures.finish_bundle

    def process(self, uri):
        from tokenmill.tokenizers import audio

        try:
            segs = audio.prepare(read_bytes(uri), uri, self.acfg)
        except audio.AudioError as e:
            LOG.warning("[rebuild] sample input %s skipped: %s", uri, e)
            yield beam.pvalue.TaggedOutput(SKIPPED, (uri, e.reason))
            return
        for s in segs:
            f = np.asarray(self.extractor.extract(s.waves[16_000]), dtype=np.float32)
            self.progress.tick(audio_s=s.duration_s)
            yield candidates(s.key, f, self.n, self.seed)


class SelectedFeatures(SemanticFeatures):
    """pass 1, rows from the dataset: (uri, [(key, n_frames, payload)]) → ("sample" | "probe",
    (priorities, key, rows, features)) for the source's rows in the global selections (chosen
    from the keys and frame counts alone, before any decode). A source with no selected row is
    not decoded; one that is writes its rows to _work/p1-<uri hash>.npz, which a resumed run
    reads instead of decoding it again."""

    def __init__(self, scfg, acfg, work: str, seeds: dict):
        super().__init__(scfg, acfg)
        self.work, self.seeds = work, seeds
        self._cache = (None, {})

    def _rows(self, sels: dict) -> dict:
        """{name: {key: [row, ...]}} of the side inputs, indexed once per worker (the runner hands
        the same side-input objects to every element; the cache holds them, so no id is reused)."""
        held = self._cache[0]
        if held is None or any(held.get(n) is not v for n, v in sels.items()):
            index = {}
            for name, (keys, rows, _) in sels.items():
                for k, r in zip(keys, rows):
                    index.setdefault(name, {}).setdefault(k, []).append(int(r))
            self._cache = (dict(sels), index)
        return self._cache[1]

    def process(self, item, probe, sample=None):
        from tokenmill.pipelines.journal import uri_hash

        uri, wanted = item
        sels = {"probe": probe} if sample is None else {"probe": probe, "sample": sample}
        index = self._rows(sels)
        need = [(name, key, n) for key, n, _ in sorted(wanted, key=lambda w: w[0]) for name in sorted(index)
                if key in index[name]]
        if not need:
            return
        path = join(self.work, f"p1-{uri_hash(uri)}.npz")
        if FileSystems.exists(path):
            with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as z:
                parts = [(str(nm), str(k), z[f"rows{i}"], z[f"x{i}"]) for i, (nm, k) in
                         enumerate(zip(z["names"], z["keys"]))]
        else:
            feats = {key: f for key, f, _ in self.features(uri, wanted)}
            parts = []
            for name, key, _ in need:
                rows = np.asarray(sorted(index[name][key]), np.int64)
                parts.append((name, key, rows, np.ascontiguousarray(feats[key][rows], dtype=np.float32)))
            buf = io.BytesIO()
            np.savez(buf, names=np.asarray([q[0] for q in parts], dtype=str),
                     keys=np.asarray([q[1] for q in parts], dtype=str),
                     **{f"rows{i}": q[2] for i, q in enumerate(parts)}, **{f"x{i}": q[3] for i, q in enumerate(parts)})
            atomic_write(path, buf.getvalue())
            _after_entry()
        n_frames = {key: n for key, n, _ in wanted}
        for name, key, rows, x in parts:
            prio = frames_priority(key, n_frames[key], self.seeds[name])[rows]
            yield beam.pvalue.TaggedOutput(name, (prio, key, rows, x))


def by_uri(item):
    key, places, (uri, old) = item
    return uri, (key, int(old.shape[0]), (places, old))


# ---------------------------------------------------------------- pass 1

class WritePass1(beam.DoFn):
    """The sample and the probe (and --input's skipped files) → OUT/_work/pass1.npz, one file."""

    def __init__(self, path: str):
        self.path = path

    def process(self, _, sample, probe, skipped):
        buf = io.BytesIO()
        arrays = {}
        for name, (keys, rows, feats) in (("sample", sample), ("probe", probe)):
            arrays[f"{name}_keys"] = np.asarray(keys, dtype=str)
            arrays[f"{name}_rows"] = rows
            arrays[f"{name}_x"] = feats if feats is not None else np.empty((0, 0), np.float32)
        arrays["skipped"] = np.asarray(json.dumps(sorted(skipped)))
        np.savez(buf, **arrays)
        atomic_write(self.path, buf.getvalue())
        _after_entry()
        yield self.path


def build_pass1(p, *, root: str, manifest: dict, stream: str, cfg, probe_seed: int, out_path: str, work: str,
                scfg=None, acfg=None, input_uris: list[str] | None = None):
    """Pass 1 (module docstring) into `p`; writes `out_path`."""
    records = p | "Parent" >> ReadParent(root, manifest, stream)
    sample_rows = None
    if stream == "semantic":
        # which frames are sampled depends on (key, frame count) only: select first, then decode
        # only the sources that hold selected frames, and only their selected rows travel
        sizes = records | "Sizes" >> beam.Map(lambda e: (e[0], int(e[2][1].shape[0])))
        seeds = {"probe": probe_seed} if input_uris else {"probe": probe_seed, "sample": cfg.seed}
        n = {"probe": cfg.probe_frames, "sample": cfg.sample_frames}
        sels = {name: (sizes | f"Select{name}" >> beam.Map(lambda e, k, sd: selection(e[0], e[1], k, sd), n[name], sd)
                       | f"Selected{name}" >> beam.CombineGlobally(BottomKRows(n[name])))
                for name, sd in seeds.items()}
        picked = (records | "ByUri" >> beam.Map(by_uri) | "GroupUri" >> beam.GroupByKey()
                  | "Features" >> beam.ParDo(SelectedFeatures(scfg, acfg, work, seeds),
                                             *[beam.pvalue.AsSingleton(sels[nm]) for nm in sorted(seeds, key=lambda x: x != "probe")])
                  .with_outputs(*seeds))
        probe_rows = picked["probe"]
        if not input_uris:
            sample_rows = picked["sample"]
    else:
        rows = records | "Rows" >> beam.Map(lambda e: (e[0], np.asarray(e[2][0], dtype=np.float32)))
        probe_rows = rows | "ProbeRows" >> beam.Map(lambda e: candidates(e[0], e[1], cfg.probe_frames, probe_seed))
        sample_rows = rows | "SampleRows" >> beam.Map(lambda e: candidates(e[0], e[1], cfg.sample_frames, cfg.seed))
    probe = probe_rows | "Probe" >> beam.CombineGlobally(BottomKRows(cfg.probe_frames))
    if input_uris:
        split = (p | "Inputs" >> beam.Create(sorted(input_uris)) | "SpreadInputs" >> beam.Reshuffle()
                 | "InputFeatures" >> beam.ParDo(InputFeatures(scfg, acfg, cfg.sample_frames, cfg.seed))
                 .with_outputs(SKIPPED, main="rows"))
        sample_rows, skipped = split.rows, split[SKIPPED]
    else:
        skipped = p | "NoSkipped" >> beam.Create([])
    sample = sample_rows | "Sample" >> beam.CombineGlobally(BottomKRows(cfg.sample_frames))
    return (p | "Once" >> beam.Create([None])
            | "Write" >> beam.ParDo(WritePass1(out_path), beam.pvalue.AsSingleton(sample),
                                    beam.pvalue.AsSingleton(probe), beam.pvalue.AsList(skipped)))


def read_pass1(path: str) -> tuple[tuple, tuple, dict]:
    with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as z:
        def part(name):
            return [str(k) for k in z[f"{name}_keys"]], z[f"{name}_rows"], z[f"{name}_x"]

        return part("sample"), part("probe"), dict(json.loads(str(z["skipped"])))


# ---------------------------------------------------------------- pass 2

def drift_counts(stream: str, old: np.ndarray, new: np.ndarray, k: int) -> dict:
    """Integer drift counts of one record (summed over records by the launcher)."""
    old, new = np.asarray(old).astype(np.int64), np.asarray(new).astype(np.int64)
    if stream == "melody":  # [W, stages]: usage per stage over the windows
        before = np.stack([np.bincount(old[:, s], minlength=k) for s in range(old.shape[1])])
        after = np.stack([np.bincount(new[:, s], minlength=k) for s in range(new.shape[1])])
    elif stream == "mulan":   # one token per RVQ stage: usage [stages, k]
        before = np.zeros((old.shape[0], k), np.int64)
        after = np.zeros((new.shape[0], k), np.int64)
        before[np.arange(old.shape[0]), old] = 1
        after[np.arange(new.shape[0]), new] = 1
    else:
        before, after = np.bincount(old, minlength=k), np.bincount(new, minlength=k)
    return {"n_records": 1, "n_tokens": int(old.size), "tokens_changed": int((old != new).sum()),
            "records_changed": int(bool((old != new).any())), "usage_before": before, "usage_after": after}


def add_counts(a: dict | None, b: dict) -> dict:
    if a is None:
        return dict(b)
    return {k: a[k] + b[k] for k in a}


class SumCounts(beam.CombineFn):
    def create_accumulator(self):
        return None

    def add_input(self, acc, c):
        return add_counts(acc, c)

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = add_counts(out, a)
        return out

    def extract_output(self, acc):
        return acc


def load_codebook(stream: str, directory: str, cid: str):
    """The codebook `cid` saved under `directory` (any FileSystems URL; copied to a temp dir)."""
    import tempfile
    from pathlib import Path

    from tokenmill.tokenizers.kmeans import Codebook
    from tokenmill.tokenizers.rvq import RVQCodebook

    tmp = Path(tempfile.mkdtemp(prefix="tokenmill-rebuild-cb-"))
    for ext in (".safetensors", ".json"):
        (tmp / f"{cid}{ext}").write_bytes(read_bytes(join(directory, f"{cid}{ext}")))
    cls = Codebook if stream == "semantic" else RVQCodebook
    return cls.load(tmp / f"{cid}.safetensors")


class NewTokens(beam.DoFn):
    """pass 2: (key, new tokens, (places, old)) → (shard, (pos, key, tokens)) for each place in a
    shard still to write, and (first shard, counts) when the first place is still to write."""

    def __init__(self, stream: str, k: int, todo: frozenset):
        self.stream, self.k, self.todo = stream, k, todo

    def process(self, item):
        key, new, (places, old) = item
        for shard, pos in places:
            if shard in self.todo:
                yield shard, ("tok", pos, key, new)
        if places[0][0] in self.todo:
            yield places[0][0], ("cnt", drift_counts(self.stream, old, new, self.k))


class NewCodebookTokens(beam.DoFn):
    """semantic (key, features, payload) → (key, new tokens, payload) with the new codebook;
    mulan (key, places, (windows, old)) → (key, segment_tokens(windows, new RVQ), (places, old));
    melody the same with window_tokens (one code per stored window).
    The codebook is loaded from OUT/codebooks on the worker (never pickled into the graph)."""

    def __init__(self, stream: str, directory: str, cid: str):
        self.stream, self.directory, self.cid = stream, directory, cid

    def setup(self):
        self.child = load_codebook(self.stream, self.directory, self.cid)

    def process(self, item):
        if self.stream == "semantic":
            key, f, payload = item
            yield key, self.child.assign(f), payload
        else:
            if self.stream == "melody":
                from tokenmill.tokenizers.melody_tokens import window_tokens as encode
            else:
                from tokenmill.tokenizers.mulan import segment_tokens as encode

            key, places, (windows, old) = item
            yield key, encode(windows, self.child), (places, old)


class WriteColumnShard(beam.DoFn):
    """(shard, [("tok", pos, key, tokens)..., ("cnt", counts)...]) → OUT/streams/<stream>/part-IIIII
    .parquet in the base shard's record order, then _work/col-IIIII.json (its entry + counts)."""

    def __init__(self, out: str, work: str, stream: str, field: str, k: int, n_stages: int | None):
        self.out, self.work, self.stream, self.field = out, work, stream, field
        self.k, self.n_stages = k, n_stages

    def process(self, item):
        shard, parts = item
        toks = sorted(((p[1], p[2], p[3]) for p in parts if p[0] == "tok"), key=lambda t: t[0])
        counts = None
        for p in parts:
            if p[0] == "cnt":
                counts = add_counts(counts, p[1])
        if counts is None:
            usage = np.zeros(self.k, np.int64) if self.n_stages is None else np.zeros((self.n_stages, self.k), np.int64)
            counts = {"n_records": 0, "n_tokens": 0, "tokens_changed": 0, "records_changed": 0,
                      "usage_before": usage, "usage_after": usage}
        data = versions.encode_column_shard([t[1] for t in toks], {self.field: [t[2] for t in toks]})
        name = versions.column_shard_name(self.stream, shard)
        atomic_write(join(self.out, name), data)
        entry = {"path": name, "records": len(toks), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        counts = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in counts.items()}
        atomic_write(join(self.work, f"col-{shard:05d}.json"),
                     json.dumps({"shard": entry, "counts": counts}, sort_keys=True).encode())
        _after_entry()
        yield shard


def build_pass2(p, *, root: str, manifest: dict, stream: str, child, codebooks_dir: str, out: str, work: str,
                todo: frozenset, scfg=None, acfg=None):
    """Pass 2 (module docstring) into `p` for the parent shards in `todo`; `child` (saved in
    `codebooks_dir`) gives k and the stage count only."""
    records = p | "Parent" >> ReadParent(root, manifest, stream)
    needed = records | "Needed" >> beam.Filter(lambda e, t: any(s in t for s, _ in e[1]), todo)
    tokens = NewCodebookTokens(stream, codebooks_dir, child.id)
    if stream == "semantic":
        new = (needed | "ByUri" >> beam.Map(by_uri) | "GroupUri" >> beam.GroupByKey()
               | "Features" >> beam.ParDo(SemanticFeatures(scfg, acfg)) | "Assign" >> beam.ParDo(tokens))
        n_stages = None
    else:
        new = needed | "Encode" >> beam.ParDo(tokens)
        n_stages = child.n_stages
    field = versions.OVERRIDE_FIELDS[stream][0]
    placed = new | "Places" >> beam.ParDo(NewTokens(stream, child.k, todo))
    every = p | "EveryShard" >> beam.Create([(s, ("nil",)) for s in sorted(todo)])  # empty shards too
    return ((placed, every) | "All" >> beam.Flatten()
            | "ByShard" >> beam.GroupByKey()
            | "WriteColumns" >> beam.ParDo(WriteColumnShard(out, work, stream, field, child.k, n_stages)))
