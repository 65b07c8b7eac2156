"""Resume an interrupted `tokenize --output DIR`: a journal of finished sources under DIR/_work.

While the job runs, every outcome the models produce is written to DIR/_work as one small file,
atomically (temp + rename, sinks.atomic_write), as soon as it exists:

    _work/job.json                   what the journal's tokens depend on (job, tokenizers, codebooks)
    _work/<uh>.plan-<n>.json         the source decoded into n segments      (uh = sha256(uri)[:16])
    _work/<uh>-<iiii>.npz            segment i's metadata + tokens, after the last model stage
    _work/<uh>-<iiii>.dead.json      segment i's dead letter from a model stage
    _work/<uh>.dead.json             the source's read/decode dead letter

A source is *finished* when it has a `.dead.json`, or a plan and all n segment entries. When the
same command runs again on DIR (manifest.json not written yet, the job was killed), the launcher
lists _work once: finished sources that the inputs still match are not read, decoded or run
through any model; their entries go straight into deduplication, shard writing and the manifest,
so the shards, the failures file and manifest.json are byte-identical to an uninterrupted run
(deduplication, captions, splits and shard assignment all happen after the journal, and are pure
functions of what it holds). Unfinished sources are read again from scratch. The number of
sources skipped is printed, counted (Beam counter `sources_resumed`) and recorded in
DIR/_resumed.json (not listed in the manifest, so the manifest stays byte-identical).

_work is removed after manifest.json is written. A journal written with other settings (another
codebook, model, segment length, ...) is refused with both values named; it is never used.
Only full runs (`--output`) resume; `tokenize --into` re-runs already rewrite the same bytes. An
`--into` run writes its segments' tokens to DIR/_spill-vNNNN (the same .npz entries) only so that
its shuffles carry references (pipelines/entries.py); it is emptied at the start and removed at
the end.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from tokenmill.pipelines.entries import (  # noqa: F401 (JournalError, decode_segment: this module's API)
    JournalError, TokenRef, _json_default, decode_segment, encode_segment,
)
from tokenmill.pipelines.sinks import atomic_write
from tokenmill.schemas.shards import DeadLetter

LOG = logging.getLogger("tokenmill")
WORK_DIR = "_work"
RESUMED_NAME = "_resumed.json"
SPILL_PREFIX = "_spill-v"  # tokenize --into: DIR/_spill-vNNNN holds the new version's tokens while it runs
JOB_NAME = "job.json"
COMPUTE_NAME = "compute.json"  # the compute layout/kernels of the run that started the journal
PAUSE_ENV = "TOKENMILL_TEST_PAUSE_AFTER_JOURNAL"  # tests only: "N:MARKER" pauses after N entries
_ENTRY = re.compile(r"^(?P<uh>[0-9a-f]{16})(?:\.plan-(?P<n>\d+)\.json|-(?P<seg>\d{4})(?P<kind>\.npz|\.dead\.json)"
                    r"|(?P<dead>\.dead\.json))$")


def uri_hash(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def work_dir(output: str) -> str:
    return f"{output.rstrip('/')}/{WORK_DIR}"


def segment_index(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


# ---- pause hook (tests) ------------------------------------------------------------------------

_written = 0


def _after_entry() -> None:
    """With TOKENMILL_TEST_PAUSE_AFTER_JOURNAL="N:MARKER", the N-th entry written by this process
    creates MARKER and sleeps, so a test can look at the output and kill the job at a known point."""
    global _written
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    _written += 1
    n, marker = spec.split(":", 1)
    if _written == int(n):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)


# ---- pipeline pieces ---------------------------------------------------------------------------

class JournalPlan(beam.DoFn):
    """SegmentInput → itself; segment 0 records how many segments its source decoded into."""

    def __init__(self, work: str):
        self.work = work

    def process(self, seg):
        if seg.segment == 0:
            atomic_write(f"{self.work}/{uri_hash(seg.uri)}.plan-{seg.n_segments}.json",
                         json.dumps({"uri": seg.uri, "n_segments": seg.n_segments}).encode())
        yield seg


class JournalSegment(beam.DoFn):
    """(source_hash, (meta, tokens)) → (source_hash, (meta, TokenRef)), after writing the tokens
    to the journal: from here on only the reference travels (pipelines/entries.py)."""

    def __init__(self, work: str):
        self.work = work

    def process(self, item):
        source_hash, (meta, tokens) = item
        path = f"{self.work}/{uri_hash(meta['uri'])}-{meta['segment']:04d}.npz"
        atomic_write(path, encode_segment(meta, tokens))
        _after_entry()
        yield source_hash, (meta, TokenRef.of(path, tokens))


class JournalDead(beam.DoFn):
    """DeadLetter (read, decode or a model stage) → itself, after writing it to the journal."""

    def __init__(self, work: str):
        self.work = work

    def process(self, d: DeadLetter):
        name = f"{uri_hash(d.uri)}.dead.json" if d.key is None else \
            f"{uri_hash(d.uri)}-{segment_index(d.key):04d}.dead.json"
        atomic_write(f"{self.work}/{name}", json.dumps(asdict(d), sort_keys=True).encode())
        _after_entry()
        yield d


class ReadJournal(beam.DoFn):
    """(path, uri) of a finished source's entry → its (source_hash, (meta, TokenRef)), or its
    DeadLetter on the 'dead' output. The entry must belong to `uri` (and is read whole to check
    that it loads)."""

    def __init__(self):
        self.n = beam.metrics.Metrics.counter("tokenmill", "journal_entries_read")

    def process(self, path_uri):
        path, uri = path_uri
        with FileSystems.open(path) as f:
            data = f.read()
        self.n.inc()
        if path.endswith(".npz"):
            meta, tokens = decode_segment(data, path)
            got = meta.get("uri")
            if got != uri:
                raise JournalError(f"{path}: journal entry of {got!r}, expected {uri!r}; delete {path}")
            yield meta["key"].split("-", 1)[0], (meta, TokenRef.of(path, tokens))
            return
        try:
            d = DeadLetter(**json.loads(data))
        except (json.JSONDecodeError, TypeError) as e:
            raise JournalError(f"{path}: unreadable journal entry ({e}); delete it") from e
        if d.uri != uri:
            raise JournalError(f"{path}: journal entry of {d.uri!r}, expected {uri!r}; delete {path}")
        yield beam.pvalue.TaggedOutput("dead", d)


# ---- the launcher's side -----------------------------------------------------------------------

@dataclass(frozen=True)
class Journal:
    """The journal of one `tokenize --output` run: where it lives and what it already holds."""

    work: str
    finished: dict  # uri -> tuple of entry paths, for sources finished by an earlier (killed) run
    n_matched: int = 0  # inputs the patterns match (0: not listed, a fresh journal)
    compute_before: dict | None = None  # resumed: the `compute` entry of the run that started it

    @property
    def skip(self) -> frozenset:
        return frozenset(self.finished)

    def entries(self) -> list[tuple[str, str]]:
        return sorted((p, uri) for uri, paths in self.finished.items() for p in paths)


def _list(work: str) -> list[str]:
    if not FileSystems.exists(work):
        return []
    return sorted(m.path for m in FileSystems.match([f"{work}/*"])[0].metadata_list)


def open_journal(output: str, fingerprint: dict, patterns: tuple[str, ...],
                 compute_entry: dict | None = None) -> Journal:
    """Create DIR/_work (recording `fingerprint` and `compute_entry`), or reuse the one an
    interrupted run left: refuse it when its fingerprint differs; otherwise find the matched inputs
    it already finished. The compute layout is not part of the fingerprint: a resume under other
    threads or kernels is allowed, and `Journal.compute_before` lets the launcher say so."""
    work = work_dir(output)
    job_path = f"{work}/{JOB_NAME}"
    compute_path = f"{work}/{COMPUTE_NAME}"
    want = json.dumps(fingerprint, sort_keys=True, indent=1, default=_json_default).encode()
    if not FileSystems.exists(job_path):
        if compute_entry is not None:
            atomic_write(compute_path, json.dumps(compute_entry, sort_keys=True, indent=1).encode())
        atomic_write(job_path, want)
        return Journal(work=work, finished={})
    with FileSystems.open(job_path) as f:
        have = f.read()
    if have != want:
        a, b = json.loads(have), json.loads(want)
        diff = _first_diff(a, b, "")
        raise JournalError(
            f"{job_path}: an interrupted run of {output} used other settings ({diff}); its journal "
            f"cannot be reused. Re-run with that run's settings to resume it, or delete {work} to "
            "start over")
    by_uh: dict[str, dict] = {}
    for path in _list(work):
        m = _ENTRY.match(path.rsplit("/", 1)[-1])
        if not m:
            continue  # job.json, temp files of writes the kill interrupted (rewritten on demand)
        e = by_uh.setdefault(m["uh"], {"paths": [], "n": None, "segs": set(), "dead": False, "plan": None})
        if m["n"] is not None:
            e["n"], e["plan"] = int(m["n"]), path
        elif m["dead"]:
            e["dead"] = True
            e["paths"].append(path)
        else:
            e["segs"].add(int(m["seg"]))
            e["paths"].append(path)
    matched = {md.path for r in FileSystems.match(list(patterns)) for md in r.metadata_list}
    finished = {}
    for uri in sorted(matched):
        e = by_uh.get(uri_hash(uri))
        if e is None:
            continue
        if e["dead"] and not e["segs"]:
            finished[uri] = tuple(e["paths"])
        elif e["n"] is not None and e["segs"] == set(range(e["n"])):
            finished[uri] = tuple(e["paths"])
    before = None
    if FileSystems.exists(compute_path):
        with FileSystems.open(compute_path) as f:
            before = json.loads(f.read())
    return Journal(work=work, finished=finished, n_matched=len(matched), compute_before=before)


def _first_diff(a, b, where: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_diff(a.get(k), b.get(k), f"{where}.{k}")
            if d:
                return d
        return ""
    return "" if a == b else f"{where.lstrip('.')} was {json.dumps(a)}, now {json.dumps(b)}"


def open_spill(output: str, version: int) -> Journal:
    """`tokenize --into`: a journal used only to spill tokens (pipelines/entries.py), never to
    resume: DIR/_spill-vNNNN, emptied first (a killed run of the same version left it)."""
    work = f"{output.rstrip('/')}/{SPILL_PREFIX}{version:04d}"
    remove_work(work)
    return Journal(work=work, finished={})


def remove_work(work: str) -> None:
    paths = _list(work)
    if paths:
        FileSystems.delete(paths)
    if FileSystems.exists(work):
        FileSystems.delete([work])


def close_journal(output: str, journal: Journal) -> None:
    """After manifest.json is written: record what the run resumed, then remove _work."""
    out = output.rstrip("/")
    if journal.finished:
        atomic_write(f"{out}/{RESUMED_NAME}", json.dumps(
            {"sources_skipped_finished": len(journal.finished), "journal_entries_used": len(journal.entries()),
             "sources_read": journal.n_matched - len(journal.finished)}, indent=1, sort_keys=True).encode() + b"\n")
    elif FileSystems.exists(f"{out}/{RESUMED_NAME}"):
        FileSystems.delete([f"{out}/{RESUMED_NAME}"])  # from an earlier resumed run of this output
    remove_work(journal.work)
