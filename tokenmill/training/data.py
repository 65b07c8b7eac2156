"""Shard-URL readers for training (DESIGN §7): records from local or remote shards, split over
ranks × DataLoader workers, shuffled deterministically, with checkpointable mid-epoch state.

Sources (`ShardReader(source, ...)`):
- a dataset root or its `manifest.json` URL: local path, `file://`, `http(s)://`, `gs://`, `s3://`.
  The manifest is read first from the same base URL; `expect_codebooks` / `expect_schema` are
  checked against it (schemas/compat.py) before any shard is fetched, and every shard (and column
  shard of a dataset version, schemas/versions.py) is checked against its manifest sha256 after it
  is fetched and before it is decoded (`ChecksumError` names the URL and both hashes).
- explicit shard URLs (a string or a list), each may hold brace sets
  `shard-{000000..000099}.tar` / `{train,valid}` (`expand_braces`). Pass `manifest=URL` to check
  them against a manifest; without one, checksums cannot be verified and the reader refuses unless
  `verify_checksums=False` is given (no silent downgrade).
Remote bytes: http(s) through urllib (stdlib); gs/s3/other schemes through fsspec, which needs
gcsfs / s3fs installed (the error names the package). Formats: WebDataset tar (`.tar[.xz|.gz]`)
and Parquet, decoded with the schemas' safe decoders (no pickle, checked tar members).

Yields `TrackRecord`s (schemas/records.py), one epoch per `iter()`. Records are dataclasses, so a
DataLoader needs `batch_size=None` or a `collate_fn` (training/crops.py turns records into batches).

Split: the epoch's shard permutation (the same on every consumer) is dealt round-robin to the
C = world_size × num_workers consumers (consumer c = rank × num_workers + worker gets
perm[c::C]), so each shard is read exactly once per epoch and counts differ by at most one. With
fewer shards than consumers the reader raises (naming both numbers) unless `resample=True`, which
pads the permutation cyclically to C × ceil(n / C) entries so every consumer gets the same number
of shards and no rank is ever left without data (webdataset#188: an empty rank hangs DDP).

Randomness is a hash of (seed, epoch, consumer, index): no clock, no pid, no global RNG. The shard
order is hash(seed, epoch, shard); the shuffle buffer (`shuffle_buffer` records) yields, at its
k-th output, the slot hash(seed, epoch, consumer, k) mod its size.

State (`state_dict()` / `load_state_dict()`, JSON-able): epoch, next shard position, records of
that shard already read, records yielded this epoch, and the shuffle buffer as (shard position,
record index) references; on load the referenced shards are re-fetched (checksummed) and the
buffer rebuilt, so the continued stream equals an uninterrupted one. It describes the in-process
iterator: with DataLoader workers each worker holds its own state (use a loader that checkpoints
per worker, e.g. torchdata's StatefulDataLoader); call `set_epoch(e)` each epoch when workers are
not persistent, because an epoch finished in a worker does not advance the main process's copy.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import re
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from tokenmill.errors import TokenmillError
from tokenmill.schemas import versions
from tokenmill.schemas.compat import check_compatible
from tokenmill.schemas.records import MANIFEST_NAME, TrackRecord
from tokenmill.schemas.shards import (
    ChecksumError,
    ShardFormatError,
    decode_parquet,
    decode_wds,
    parse_manifest,
)

STATE_VERSION = 1
FORMAT_BY_SUFFIX = (("parquet", ".parquet"), ("webdataset", ".tar"), ("webdataset", ".tar.xz"),
                    ("webdataset", ".tar.gz"), ("webdataset", ".tgz"))
FSSPEC_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "az": "adlfs", "abfs": "adlfs"}


class ReaderError(TokenmillError, ValueError):
    """The reader cannot be built or cannot fetch/split its shards; the message names the fix."""


# ---- brace sets ------------------------------------------------------------------------------

def expand_braces(pattern: str) -> list[str]:
    """Expand `{a..b}` integer ranges (zero-padded when an endpoint is, as in `{000..099}`) and
    `{x,y,z}` lists, left to right; several and nested braces multiply out, in order."""
    i = pattern.find("{")
    if i < 0:
        if "}" in pattern:
            raise ReaderError(f"unbalanced '}}' in shard pattern {pattern!r}")
        return [pattern]
    head = pattern[:i]
    if "}" in head:
        raise ReaderError(f"unbalanced '}}' in shard pattern {pattern!r}")
    depth, j = 0, i
    for j in range(i, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[j], 0)
        if depth == 0:
            break
    if depth:
        raise ReaderError(f"unbalanced '{{' in shard pattern {pattern!r}")
    body, tail = pattern[i + 1:j], expand_braces(pattern[j + 1:])
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        padded = [s for s in m.groups() if len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0")]
        width = max(len(s) for s in m.groups()) if padded else 0
        options = [f"{k:0{width}d}" for k in range(a, b + (1 if b >= a else -1), 1 if b >= a else -1)]
    else:
        alts, depth, start = [], 0, 0
        for k, ch in enumerate(body):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                alts.append(body[start:k])
                start = k + 1
        alts.append(body[start:])
        if len(alts) < 2:
            raise ReaderError(f"brace set {{{body}}} in {pattern!r} is neither a range {{000..099}} "
                              "nor a list {a,b}")
        options = [o for alt in alts for o in expand_braces(alt)]
    return [head + o + t for o in options for t in tail]


# ---- URLs and bytes --------------------------------------------------------------------------

def _scheme(url: str) -> str:
    s = urllib.parse.urlsplit(url).scheme
    return "" if len(s) <= 1 else s.lower()  # one letter: a Windows drive, a local path


def join_url(base: str, rel: str) -> str:
    """`rel` (a manifest path, '/'-separated, may hold '..') resolved against the directory `base`."""
    if _scheme(rel):
        return rel
    scheme = _scheme(base)
    if scheme in ("", "file"):
        path = urllib.parse.urlsplit(base).path if scheme == "file" else base
        out = os.path.normpath(os.path.join(path, *rel.split("/")))
        return "file://" + out if scheme == "file" else out
    parts = urllib.parse.urlsplit(base)
    path = posixpath.normpath(posixpath.join(parts.path or "/", rel))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


HTTP_RETRIES = 3  # transient http(s) failures (no connection, 5xx, timeout) retried after 0.5, 1, 2 s
RETRY_STATUS = (429, 500, 502, 503, 504)
LOG = logging.getLogger("tokenmill")


def _http_get(url: str, timeout_s: float, retries: int) -> bytes:
    """GET with retries of transient failures, each logged (a server still starting, a 503 from
    a busy store); 4xx other than 429 fails at once."""
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code not in RETRY_STATUS or attempt == retries:
                raise
            why = f"HTTP {e.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt == retries:
                raise
            why = str(getattr(e, "reason", e))
        LOG.warning("%s: %s; retry %d of %d in %.1f s", url, why, attempt + 1, retries, 0.5 * 2 ** attempt)
        time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def fetch(url: str, *, timeout_s: float = 60.0, retries: int = HTTP_RETRIES) -> bytes:
    """All bytes at `url`: a local path, file://, http(s):// (urllib, transient failures retried
    `retries` times with backoff) or any fsspec scheme."""
    scheme = _scheme(url)
    try:
        if scheme in ("", "file"):
            with open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path) if scheme == "file" else url,
                      "rb") as f:
                return f.read()
        if scheme in ("http", "https"):
            return _http_get(url, timeout_s, retries)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no such file; check the dataset path, or run "
                                "beam_runner.py verify on the dataset") from None
    except urllib.error.HTTPError as e:
        raise ReaderError(f"{url}: HTTP {e.code} {e.reason}; check the URL and that the server "
                          "serves the dataset directory") from None
    except (urllib.error.URLError, TimeoutError) as e:
        raise ReaderError(f"{url}: cannot connect ({getattr(e, 'reason', e)}); check the host, port "
                          f"and network, or raise timeout_s (now {timeout_s} s); tried {retries + 1} times") from None
    try:
        import fsspec
    except ImportError:
        raise ReaderError(f"{url}: {scheme}:// URLs are read through fsspec, which is not installed; "
                          f"pip install fsspec {FSSPEC_PACKAGES.get(scheme, '')}".rstrip()) from None
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except ImportError as e:
        pkg = FSSPEC_PACKAGES.get(scheme)
        hint = f"pip install {pkg}" if pkg else f"install the fsspec back-end for {scheme}://"
        raise ReaderError(f"{url}: reading {scheme}:// needs a package that is not installed ({e}); "
                          f"{hint}") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no such object; check the bucket and path") from None


def format_of(url: str) -> str:
    path = urllib.parse.urlsplit(url).path if _scheme(url) else url
    for fmt, suffix in sorted(FORMAT_BY_SUFFIX, key=lambda p: -len(p[1])):
        if path.endswith(suffix):
            return fmt
    raise ReaderError(f"{url}: cannot tell the shard format from the name; shards end in "
                      f"{', '.join(s for _, s in FORMAT_BY_SUFFIX)}")


def read_manifest_url(url: str, *, timeout_s: float = 60.0) -> dict:
    """The validated manifest at `url` (a manifest.json URL)."""
    return parse_manifest(fetch(url, timeout_s=timeout_s), url)


# ---- shard specs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardSpec:
    """One shard to read: its URL, format, expected sha256 (None: unchecked) and column shards
    [(url, fields, sha256)] that replace fields of its records (a dataset version)."""

    url: str
    format: str
    sha256: str | None = None
    columns: tuple[tuple[str, tuple[str, ...], str | None], ...] = field(default_factory=tuple)


def _is_shard_url(s: str) -> bool:
    return "{" in s or any(s.endswith(suf) for _, suf in FORMAT_BY_SUFFIX)


def resolve_shards(source: str | Sequence[str], *, manifest: str | None = None, format: str | None = None,
                   splits: Sequence[str] | None = None, expect_codebooks: dict[str, str] | None = None,
                   expect_schema: str | None = None, verify_checksums: bool = True,
                   timeout_s: float = 60.0) -> tuple[list[ShardSpec], dict | None, str | None]:
    """(shards to read, manifest, manifest URL); both None without one. Compatibility is checked
    here, before any shard is fetched."""
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    explicit = [source] if isinstance(source, str) and _is_shard_url(source) else (
        list(source) if not isinstance(source, str) else None)
    if explicit is None:  # a dataset root or a manifest URL
        if manifest is not None:
            raise ReaderError(f"pass manifest= only with explicit shard URLs; {source} is already a dataset")
        manifest = source if source.rstrip("/").endswith(MANIFEST_NAME) else join_url(source, MANIFEST_NAME)
    m_url = manifest
    if m_url is not None and not m_url.rstrip("/").endswith(MANIFEST_NAME):
        m_url = join_url(m_url, MANIFEST_NAME)  # a dataset root given as manifest=
    m = read_manifest_url(m_url, timeout_s=timeout_s) if m_url is not None else None
    if m is None:
        if expect_codebooks is not None or expect_schema is not None:
            raise ReaderError("expect_codebooks / expect_schema need a manifest to check against; pass "
                              f"manifest=URL of the dataset's {MANIFEST_NAME} (shards: {explicit[:2]}...)")
        if verify_checksums:
            raise ReaderError(f"shards {explicit[:2]}... have no manifest, so their sha256 cannot be "
                              f"checked; pass manifest=URL of the dataset's {MANIFEST_NAME}, or "
                              "verify_checksums=False to read them unchecked")
    else:
        check_compatible(m, schema_version=expect_schema, codebooks=expect_codebooks, source=m_url)
    base = m_url.rsplit("/", 1)[0] if m_url is not None and "/" in m_url else "."
    if explicit is None:
        formats = sorted({s["format"] for s in m["shards"]}, key=lambda f: f != "parquet")
        fmt = format or (formats[0] if formats else None)
        if fmt not in formats:
            raise ReaderError(f"{m_url} lists no {fmt} shards (it has {formats}); pass format={formats[0]!r}"
                              if formats else f"{m_url} lists no shards; did the tokenize job write any?")
        entries = [s for s in m["shards"] if s["format"] == fmt and (splits is None or s["split"] in splits)]
        if not entries:
            raise ReaderError(f"{m_url} lists no {fmt} shards of splits {list(splits or [])}")
    else:
        urls = [u for pat in explicit for u in expand_braces(pat)]
        if not urls:
            raise ReaderError("no shard URLs given")
        if m is None:
            return [ShardSpec(u, format_of(u)) for u in urls], None, None
        urls = [join_url(u, ".") for u in urls]  # normalized like the manifest's joined paths
        by_url = {join_url(base, s["path"]): s for s in m["shards"]}
        missing = [u for u in urls if u not in by_url]
        if missing:
            raise ReaderError(f"{missing[0]} (and {len(missing) - 1} more) not listed in {m_url}; shard URLs "
                              f"must be the manifest's paths joined to {base}")
        entries = [by_url[u] for u in urls]
    specs = []
    for s in entries:
        cols = tuple((join_url(base, ov["shard"]["path"]), ov["fields"], ov["shard"]["sha256"])
                     for ov in versions.overrides_for(m, s["path"]))
        specs.append(ShardSpec(join_url(base, s["path"]), s["format"], s["sha256"], cols))
    return specs, m, m_url


def _fetch_checked(url: str, sha256: str | None, verify: bool, m_url: str, timeout_s: float) -> bytes:
    data = fetch(url, timeout_s=timeout_s)
    if verify:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ChecksumError(f"{url}: sha256 {got} but {m_url} lists {sha256}; the shard was modified, "
                                "truncated or mis-served after it was written. Run beam_runner.py verify "
                                "on the dataset, then re-run tokenize to rewrite it")
    return data


def load_shard(spec: ShardSpec, *, verify_checksums: bool = True, manifest_url: str = "the manifest",
               timeout_s: float = 60.0) -> list[TrackRecord]:
    """Fetch, check and decode one shard (key order), with its column shards merged."""
    data = _fetch_checked(spec.url, spec.sha256, verify_checksums, manifest_url, timeout_s)
    try:
        recs = decode_parquet(io.BytesIO(data)) if spec.format == "parquet" else decode_wds(io.BytesIO(data))
    except ShardFormatError as e:
        raise ShardFormatError(f"{spec.url}: {e}; run beam_runner.py verify on the dataset") from e
    for url, fields, sha in spec.columns:
        cdata = _fetch_checked(url, sha, verify_checksums, manifest_url, timeout_s)
        keys, cols = versions.decode_column_shard(io.BytesIO(cdata), fields)
        recs = versions.merge_columns(recs, keys, cols, url)
    return recs


# ---- deterministic split and randomness ------------------------------------------------------

def _hash64(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(struct.pack(f"<{len(parts)}q", *parts), digest_size=8).digest(), "little")


def assign_shards(n_shards: int, *, consumer: int, n_consumers: int, seed: int, epoch: int,
                  shuffle: bool = True, resample: bool = False, what: str = "") -> list[int]:
    """Shard indices consumer `consumer` of `n_consumers` reads in `epoch`, in read order."""
    if n_shards < 1:
        raise ReaderError("no shards to read")
    if n_shards < n_consumers and not resample:
        raise ReaderError(f"{n_shards} shards cannot be split over {n_consumers} consumers ({what}); every "
                          "consumer needs at least one. Pass resample=True to repeat shards, use fewer "
                          "ranks or DataLoader workers, or write more shards (tokenize --num_shards)")
    perm = list(range(n_shards))
    if shuffle:
        perm.sort(key=lambda i: _hash64(seed, epoch, i, 1))
    if resample:
        total = -(-n_shards // n_consumers) * n_consumers
        perm += [perm[i % n_shards] for i in range(n_shards, total)]
    return perm[consumer::n_consumers]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


# ---- the reader ------------------------------------------------------------------------------

class ShardReader(IterableDataset):
    """An iterable of `TrackRecord`s over shard URLs; see the module docstring.

    `source`: dataset root / manifest URL, or shard URL(s) with brace sets. `manifest`: manifest URL
    for explicit shards. `format`: "parquet" | "webdataset" (default: Parquet when listed).
    `splits`: e.g. ("train",) (default: all). `expect_codebooks` (stream -> id) / `expect_schema`:
    refuse another dataset. `shuffle_buffer`: records held for shuffling (0/1: none).
    `rank` / `world_size`: this process among the data-parallel ranks. `resample`: see above.
    """

    def __init__(self, source: str | Sequence[str], *, manifest: str | None = None, format: str | None = None,
                 splits: Sequence[str] | None = None, expect_codebooks: dict[str, str] | None = None,
                 expect_schema: str | None = None, verify_checksums: bool = True, seed: int = 0,
                 epoch: int = 0, shuffle_shards: bool = True, shuffle_buffer: int = 0, rank: int = 0,
                 world_size: int = 1, resample: bool = False, timeout_s: float = 60.0) -> None:
        if not 0 <= rank < world_size:
            raise ReaderError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if shuffle_buffer < 0:
            raise ReaderError(f"shuffle_buffer must be >= 0 records, got {shuffle_buffer}")
        self.shards, self.manifest, self.manifest_url = resolve_shards(
            source, manifest=manifest, format=format, splits=splits, expect_codebooks=expect_codebooks,
            expect_schema=expect_schema, verify_checksums=verify_checksums, timeout_s=timeout_s)
        if len(self.shards) < world_size and not resample:  # fail on the launcher, before workers start
            assign_shards(len(self.shards), consumer=rank, n_consumers=world_size, seed=seed, epoch=epoch,
                          what=f"{world_size} ranks")
        self.verify_checksums, self.seed, self.shuffle_shards = verify_checksums, seed, shuffle_shards
        self.shuffle_buffer, self.rank, self.world_size, self.resample = shuffle_buffer, rank, world_size, resample
        self.timeout_s = timeout_s
        self._state: dict[str, Any] = self._fresh(epoch)
        self._buffer: list[tuple[int, int, TrackRecord]] | None = None  # live while iterating

    @staticmethod
    def _fresh(epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "shard_pos": 0, "rec_pos": 0, "yielded": 0, "buffer": [], "worker": None}

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning at the next iter() (call it each epoch)."""
        self._state, self._buffer = self._fresh(epoch), None

    def _load(self, spec: ShardSpec) -> list[TrackRecord]:
        return load_shard(spec, verify_checksums=self.verify_checksums,
                          manifest_url=self.manifest_url or "the manifest", timeout_s=self.timeout_s)

    def __iter__(self) -> Iterator[TrackRecord]:
        worker, n_workers = _worker()
        st = self._state
        if st["worker"] is not None and st["worker"] != [worker, n_workers] and (st["shard_pos"] or st["yielded"]):
            raise ReaderError(f"reader state belongs to worker {st['worker'][0]} of {st['worker'][1]}, but it is "
                              f"iterated in worker {worker} of {n_workers}; restore it in the same layout")
        st["worker"] = [worker, n_workers]
        n_cons = self.world_size * n_workers
        consumer = self.rank * n_workers + worker
        epoch = st["epoch"]
        order = assign_shards(len(self.shards), consumer=consumer, n_consumers=n_cons, seed=self.seed,
                              epoch=epoch, shuffle=self.shuffle_shards, resample=self.resample,
                              what=f"{self.world_size} ranks x {n_workers} DataLoader workers")
        cache: dict[int, list[TrackRecord]] = {}

        def records(pos: int) -> list[TrackRecord]:
            if pos not in cache:
                cache[pos] = self._load(self.shards[order[pos]])
            return cache[pos]

        buffer = [(p, i, records(p)[i]) for p, i in st["buffer"]]
        self._buffer = buffer
        size = max(self.shuffle_buffer, 1)

        def take() -> TrackRecord:
            k = _hash64(self.seed, epoch, consumer, st["yielded"], 2) % len(buffer) if len(buffer) > 1 else 0
            item = buffer[k]
            buffer[k] = buffer[-1]
            buffer.pop()
            st["yielded"] += 1
            return item[2]

        while st["shard_pos"] < len(order):
            pos = st["shard_pos"]
            recs = records(pos)
            while st["rec_pos"] < len(recs):
                buffer.append((pos, st["rec_pos"], recs[st["rec_pos"]]))
                st["rec_pos"] += 1
                if len(buffer) >= size:
                    yield take()
            st["shard_pos"], st["rec_pos"] = pos + 1, 0
            live = {p for p, _, _ in buffer}
            for p in [p for p in cache if p not in live]:
                del cache[p]
        while buffer:
            yield take()
        self._state, self._buffer = self._fresh(epoch + 1), None

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: resume with load_state_dict() on a reader built the same way."""
        st = dict(self._state)
        if self._buffer is not None:
            st["buffer"] = [[p, i] for p, i, _ in self._buffer]
        return {"version": STATE_VERSION, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "n_shards": len(self.shards), "shuffle_buffer": self.shuffle_buffer,
                "shards_sha256": _specs_digest(self.shards), **st}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for k in ("version", "seed", "rank", "world_size", "n_shards", "shuffle_buffer", "shards_sha256"):
            if state.get(k) != mine[k]:
                raise ReaderError(f"reader state was saved with {k}={state.get(k)!r} but this reader has "
                                  f"{k}={mine[k]!r}; build the reader with the same shards and options")
        self._state = {k: state[k] for k in self._fresh(0)}
        self._state["buffer"] = [list(x) for x in state["buffer"]]
        self._buffer = None


def _specs_digest(specs: list[ShardSpec]) -> str:
    """Identifies the shard list: by content hashes when known (so a moved dataset still resumes)."""
    return hashlib.sha256("\n".join(s.sha256 or s.url for s in specs).encode()).hexdigest()[:16]
