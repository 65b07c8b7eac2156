"""`verify DIR`: recompute everything the manifest claims and report every mismatch by file.

Checks: manifest structure; each shard's size and sha256; each shard decodes under the record
schema with the stated record count and seconds; each stream's shape against the manifest
(semantic 25/s, acoustic depth x frames, MuLan W x D unit-norm windows and S tokens < K, melody
W x D windows and W x S tokens < K);
record keys are unique and each record sits in the split and shard its key implies; Parquet and
WebDataset hold the same records; the dead-letter file's hash and line count; and the
reconciliation inputs = sources in records + dead-only sources, including the order-free digest of
the uri set. No Beam: reads local or fsspec-style paths.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from tokenmill.schemas import rates
from tokenmill.schemas import shards as fmt
from tokenmill.schemas import versions
from tokenmill.schemas.manifest import uri_digest, validate_manifest
from tokenmill.schemas.records import MANIFEST_NAME, TrackRecord, shard_of, split_of


@dataclass
class VerifyReport:
    root: str
    problems: list[str] = field(default_factory=list)
    records: dict[str, list[TrackRecord]] = field(default_factory=dict)  # format -> records
    manifest: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _records_equal(a: TrackRecord, b: TrackRecord) -> bool:
    if a.meta() != b.meta():
        return False
    sa, sb = a.streams(), b.streams()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype
                                          for k in sa)


def _check_acoustic(path: str, r: TrackRecord, info: dict | None) -> list[str]:
    """The acoustic field is present iff the manifest declares the stream, with its depth and
    ceil(duration * rate / hop) frames (T_a = 2 T_s for a 50 Hz codec)."""
    if info is None:
        return [] if r.acoustic is None else [f"{path}: record {r.key} has acoustic codes but the "
                                              "manifest declares no acoustic stream"]
    if r.acoustic is None:
        return [f"{path}: record {r.key} lacks the acoustic stream the manifest declares"]
    n = round(r.duration_s * info["sample_rate_hz"])
    want = (info["n_q"], -(-n // info["hop_samples"]))
    if r.acoustic.shape != want:
        return [f"{path}: record {r.key} has acoustic codes {r.acoustic.shape}, expected {want}"]
    if r.acoustic.size and int(r.acoustic.max()) >= info["codebook_size"]:
        return [f"{path}: record {r.key} has acoustic codes >= codebook size {info['codebook_size']}"]
    return []


def _check_mulan(path: str, r: TrackRecord, info: dict | None) -> list[str]:
    """mulan_windows and mulan are present iff the manifest declares the stream: W windows for the
    duration (rates.mulan_window_count), the manifest's D, unit-norm rows (float16: 1 ± 1e-2), and
    n_stages tokens below the RVQ's K."""
    fields = {"mulan_windows": r.mulan_windows, "mulan": r.mulan}
    if info is None:
        present = [k for k, v in fields.items() if v is not None]
        return [f"{path}: record {r.key} has {'/'.join(present)} but the manifest declares no mulan stream"] \
            if present else []
    missing = [k for k, v in fields.items() if v is None]
    if missing:
        return [f"{path}: record {r.key} lacks {'/'.join(missing)} that the manifest's mulan stream declares"]
    out = []
    want = (rates.mulan_window_count(rates.quanta_of_seconds(r.duration_s)), info["dim"])
    if r.mulan_windows.shape != want:
        out.append(f"{path}: record {r.key} has mulan_windows {r.mulan_windows.shape} for {r.duration_s} s, "
                   f"expected {want} (W windows of the manifest's dim)")
    else:
        norms = np.linalg.norm(r.mulan_windows.astype(np.float32), axis=1)
        if not np.all(np.abs(norms - 1.0) < 1e-2):
            out.append(f"{path}: record {r.key} has mulan_windows that are not unit-norm (norms "
                       f"{norms.min():.3g}..{norms.max():.3g})")
    if r.mulan.shape != (info["n_stages"],):
        out.append(f"{path}: record {r.key} has mulan tokens {r.mulan.shape}, expected ({info['n_stages']},)")
    elif r.mulan.size and int(r.mulan.max()) >= info["vocab_size"]:
        out.append(f"{path}: record {r.key} has mulan tokens >= the RVQ's K = {info['vocab_size']}")
    return out


def _check_melody(path: str, r: TrackRecord, info: dict | None) -> list[str]:
    """melody_windows and melody are present iff the manifest declares the stream: W windows for the
    duration (rates.melody_window_count), the manifest's D, unit-norm rows, and tokens [W, S] < K."""
    fields = {"melody_windows": r.melody_windows, "melody": r.melody}
    present = [k for k, v in fields.items() if v is not None]
    if info is None:
        return [f"{path}: record {r.key} has {'/'.join(present)} but the manifest declares no melody stream"] \
            if present else []
    missing = [k for k, v in fields.items() if v is None]
    if missing:
        return [f"{path}: record {r.key} lacks {'/'.join(missing)} that the manifest's melody stream declares"]
    out = []
    n_win = rates.melody_window_count(rates.quanta_of_seconds(r.duration_s))
    if r.melody_windows.shape != (n_win, info["dim"]):
        out.append(f"{path}: record {r.key} has melody_windows {r.melody_windows.shape} for {r.duration_s} s, "
                   f"expected {(n_win, info['dim'])}")
    else:
        norms = np.linalg.norm(r.melody_windows.astype(np.float32), axis=1)
        if not np.all((np.abs(norms - 1) < 1e-2) | (norms < 1e-3)):  # a silent window may embed to zeros
            out.append(f"{path}: record {r.key} has melody_windows that are neither unit-norm nor zero "
                       f"(norms {norms.min():.4f}..{norms.max():.4f})")
    if r.melody.shape != (n_win, info["n_stages"]):
        out.append(f"{path}: record {r.key} has melody tokens {r.melody.shape}, expected "
                   f"{(n_win, info['n_stages'])}")
    elif r.melody.size and int(r.melody.max()) >= info["vocab_size"]:
        out.append(f"{path}: record {r.key} has melody tokens >= the RVQ's K = {info['vocab_size']}")
    return out


def verify_dataset(root: str, *, keep_records: bool = False) -> VerifyReport:
    rep = VerifyReport(root)
    mpath = os.path.join(root, MANIFEST_NAME)
    try:
        manifest = json.loads(_read(mpath))
    except FileNotFoundError:
        rep.problems.append(f"{mpath}: missing; was the job interrupted before it finished?")
        return rep
    except json.JSONDecodeError as e:
        rep.problems.append(f"{mpath}: not valid JSON ({e})")
        return rep
    rep.manifest = manifest
    rep.problems += [f"{mpath}: {p}" for p in validate_manifest(manifest)]
    if rep.problems:
        return rep
    job = manifest["job"]
    shard_counts = {"train": job.get("num_shards"), "valid": job.get("num_valid_shards")}
    valid_fraction = job.get("valid_fraction")

    by_format: dict[str, dict[str, TrackRecord]] = {}
    for s in manifest["shards"]:
        path = os.path.join(root, s["path"])
        try:
            data = _read(path)
        except FileNotFoundError:
            rep.problems.append(f"{path}: listed in the manifest but missing")
            continue
        if len(data) != s["bytes"]:
            rep.problems.append(f"{path}: {len(data)} bytes, manifest says {s['bytes']}")
        if hashlib.sha256(data).hexdigest() != s["sha256"]:
            rep.problems.append(f"{path}: sha256 differs from the manifest (corrupt or rewritten "
                                "shard); re-run tokenize to rewrite it")
            continue
        try:
            recs = (fmt.decode_parquet(io.BytesIO(data)) if s["format"] == "parquet"
                    else fmt.decode_wds(io.BytesIO(data)))
        except (fmt.ShardFormatError, ValueError) as e:
            rep.problems.append(f"{path}: does not decode as {s['format']}: {e}")
            continue
        recs, override_problems = versions.verify_overrides(root, manifest, s, recs)  # rebuild versions
        rep.problems += override_problems
        if len(recs) != s["records"]:
            rep.problems.append(f"{path}: {len(recs)} records, manifest says {s['records']}")
        secs = round(sum(r.duration_s for r in recs), 6)
        captioned = sum(r.caption is not None for r in recs)
        if captioned != s["captioned"]:
            rep.problems.append(f"{path}: {captioned} captioned records, manifest says {s['captioned']}")
        if abs(secs - s["seconds"]) > 1e-3:
            rep.problems.append(f"{path}: {secs} s of audio, manifest says {s['seconds']}")
        seen = by_format.setdefault(s["format"], {})
        for r in recs:
            if r.key in seen:
                rep.problems.append(f"{path}: duplicate key {r.key}")
            seen[r.key] = r
            if r.split != s["split"]:
                rep.problems.append(f"{path}: record {r.key} has split {r.split} in a {s['split']} shard")
            if valid_fraction is not None and split_of(r.key, valid_fraction) != r.split:
                rep.problems.append(f"{path}: record {r.key} is in split {r.split} but its key implies "
                                    f"{split_of(r.key, valid_fraction)}")
            n = shard_counts.get(r.split)
            if n and f"-{shard_of(r.key, n):05d}-of-" not in s["path"]:
                rep.problems.append(f"{path}: record {r.key} belongs in shard {shard_of(r.key, n)}")
            if r.semantic.shape[0] != round(r.duration_s * 25):
                rep.problems.append(f"{path}: record {r.key} has {r.semantic.shape[0]} semantic "
                                    f"tokens for {r.duration_s} s (expected 25 per second)")
            rep.problems += _check_acoustic(path, r, manifest["streams"].get("acoustic"))
            rep.problems += _check_mulan(path, r, manifest["streams"].get("mulan"))
            rep.problems += _check_melody(path, r, manifest["streams"].get("melody"))

    formats = sorted(by_format)
    for a, b in zip(formats, formats[1:]):
        ka, kb = by_format[a], by_format[b]
        if ka.keys() != kb.keys():
            rep.problems.append(f"{a} and {b} hold different keys: {sorted(ka.keys() ^ kb.keys())[:5]}")
        for k in sorted(ka.keys() & kb.keys()):
            if not _records_equal(ka[k], kb[k]):
                rep.problems.append(f"record {k} differs between {a} and {b}")

    dead_uris: set[str] = set()
    for d in manifest["dead_letter_files"]:
        path = os.path.join(root, d["path"])
        try:
            data = _read(path)
        except FileNotFoundError:
            rep.problems.append(f"{path}: listed in the manifest but missing")
            continue
        if hashlib.sha256(data).hexdigest() != d["sha256"]:
            rep.problems.append(f"{path}: sha256 differs from the manifest")
        try:
            letters = fmt.decode_dead_letters(data)
        except fmt.ShardFormatError as e:
            rep.problems.append(f"{path}: {e}")
            continue
        if len(letters) != d["records"]:
            rep.problems.append(f"{path}: {len(letters)} dead letters, manifest says {d['records']}")
        dead_uris |= {x.uri for x in letters}

    c = manifest["counts"]
    rec_uris = {r.uri for r in next(iter(by_format.values()), {}).values()}
    if len(rec_uris) != c["sources_in_records"]:
        rep.problems.append(f"{len(rec_uris)} distinct uris in records, manifest counts "
                            f"{c['sources_in_records']}")
    if len(dead_uris - rec_uris) != c["sources_dead_only"]:
        rep.problems.append(f"{len(dead_uris - rec_uris)} uris only in dead letters, manifest "
                            f"counts {c['sources_dead_only']}")
    if uri_digest(rec_uris | dead_uris) != c["inputs_digest"]:
        rep.problems.append("the uris in records and dead letters are not the set of inputs the "
                            "job matched (inputs_digest differs): an input is unaccounted for")
    if keep_records:
        rep.records = {f: [v[k] for k in sorted(v)] for f, v in by_format.items()}
    return rep
