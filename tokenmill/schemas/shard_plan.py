"""Shard counts sized by the data: how many train and valid shards a new dataset gets.

A new dataset's shard count is derived at launch from the listing of its inputs, so nobody has to
compute `--num_shards` and a 280k-hour corpus does not end up in 4 shards of ~300 GB each:

    audio_s      = sum over extensions e of  bytes(e) / INPUT_BYTES_PER_S[e]       (an estimate)
    out_bytes    = audio_s * sum over the streams of their stored bytes per audio second
    train shards = max(1, ceil(out_bytes * (1 - valid_fraction) / target_bytes))
    valid shards = max(1, ceil(out_bytes * valid_fraction / target_bytes))

- Inputs: the matched files' sizes as Beam FileSystems lists them (no file is opened), summed per
  lower-case extension in integers, so the result does not depend on listing order, worker count
  or file times: the same set of (path, size) gives the same layout. A file matched by two patterns
  counts once.
- INPUT_BYTES_PER_S are stated, typical rates (CD PCM for WAV; ~57 % of it for FLAC; 128 kb/s for
  MP3/AAC/Vorbis; 96 kb/s for Opus). Unknown extensions take the lossy rate: overestimating the
  audio gives more, smaller shards, never fewer, larger ones.
- Stream bytes per second are the stored array bytes (before Parquet zstd / tar xz compression),
  from the streams' manifest entries: semantic 2 B x 25 Hz = 50 B/s, built-in acoustic
  2 B x 12 levels x 50 Hz = 1,200 B/s, built-in MuLan windows 2 B x 128 / 1 s = 256 B/s. Written
  shards are compressed, so they come out at or under the target.
- A shard's records are a function of its key and this count (records.shard_of), so the count is
  the layout: `tokenize --into` keeps the dataset's count and never derives one.

Pure arithmetic: no Beam, no I/O (pipelines/ingest.list_inputs produces the listing).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tokenmill.errors import TokenmillError

MIB = 1 << 20
DEFAULT_TARGET_SHARD_MB = 256  # MiB of stored arrays per shard file

# bytes of an input file per second of audio, by extension (lower case, with the dot)
INPUT_BYTES_PER_S = {
    ".wav": 176_400, ".aif": 176_400, ".aiff": 176_400,   # 16-bit 44.1 kHz stereo PCM
    ".flac": 100_000,                                      # ~57 % of CD PCM
    ".mp3": 16_000, ".m4a": 16_000, ".aac": 16_000, ".ogg": 16_000,  # 128 kb/s
    ".opus": 12_000,                                       # 96 kb/s
}
UNKNOWN_INPUT_BYTES_PER_S = 16_000


class ShardPlanError(TokenmillError, ValueError):
    """A shard plan cannot be made from these values; the message names the flag to fix."""


def extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[1].lower() if "." in name else ""


def input_bytes_per_s(ext: str) -> int:
    return INPUT_BYTES_PER_S.get(ext, UNKNOWN_INPUT_BYTES_PER_S)


def stream_bytes_per_s(streams: dict) -> dict[str, float]:
    """Stored array bytes per audio second of each stream, from manifest stream entries
    (pipelines/tokenize.manifest_entries). MuLan's per-segment tokens (2 B x stages) are omitted."""
    out = {}
    for name, s in sorted(streams.items()):
        if name == "semantic":
            out[name] = 2.0 * s["frame_rate_hz"]
        elif name == "acoustic":
            out[name] = 2.0 * s["n_q"] * s["frame_rate_hz"]
        elif name == "mulan":
            out["mulan_windows"] = 2.0 * s["dim"] / s["stride_s"]
        elif name == "melody":  # float16 windows + uint16 tokens, one row each per stride
            out["melody"] = (2.0 * s["dim"] + 2.0 * s["n_stages"]) / s["stride_s"]
        else:
            raise ShardPlanError(f"no bytes-per-second rule for stream {name!r}")
    return out


@dataclass(frozen=True)
class ShardPlan:
    """The derived layout and how it was derived (saved in the manifest's job as `shard_plan`)."""

    num_shards: int
    num_valid_shards: int
    target_shard_mb: float
    input_files: int
    input_bytes: int
    est_audio_hours: float
    out_bytes_per_s: float
    est_out_bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def plan_shards(bytes_by_ext: dict[str, int], n_files: int, streams: dict, *, valid_fraction: float,
                target_shard_mb: float = DEFAULT_TARGET_SHARD_MB) -> ShardPlan:
    """The shard counts for inputs totalling `bytes_by_ext` (extension -> summed file bytes)."""
    if not target_shard_mb > 0:
        raise ShardPlanError(f"--target_shard_mb must be > 0, got {target_shard_mb}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ShardPlanError(f"--valid_fraction must be in [0, 1), got {valid_fraction}")
    audio_s = sum(b / input_bytes_per_s(e) for e, b in sorted(bytes_by_ext.items()))
    per_s = sum(stream_bytes_per_s(streams).values())
    out_bytes = audio_s * per_s
    target = target_shard_mb * MIB
    return ShardPlan(
        num_shards=max(1, math.ceil(out_bytes * (1.0 - valid_fraction) / target)),
        num_valid_shards=max(1, math.ceil(out_bytes * valid_fraction / target)),
        target_shard_mb=target_shard_mb, input_files=n_files, input_bytes=sum(bytes_by_ext.values()),
        est_audio_hours=round(audio_s / 3600, 3), out_bytes_per_s=per_s, est_out_bytes=round(out_bytes))
