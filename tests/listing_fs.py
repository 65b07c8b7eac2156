"""A fake object store that lists N audio files with realistic sizes, for the launch-time listing
(tests/test_shard_plan.py, bench/bench_listing.py). `tmlist://corpus/clip-IIIIIII.EXT`; nothing
can be opened. Sizes are deterministic in (seed, index): a clip of 60 to 340 s (uniform, mean
201.6 s: 5M clips = 280k hours), in a format mix of 60 % MP3, 25 % FLAC, 10 % Ogg Vorbis, 5 % WAV,
at its format's stated bytes per second (schemas/shard_plan.INPUT_BYTES_PER_S) times a per-file
bitrate factor in [0.8, 1.2)."""
from __future__ import annotations

import numpy as np
from apache_beam.io.filesystem import FileMetadata, FileSystem

from tokenmill.schemas.shard_plan import INPUT_BYTES_PER_S

EXTS = (".mp3",) * 12 + (".flac",) * 5 + (".ogg",) * 2 + (".wav",)


def sizes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(extension index into EXTS, duration_s float64, size_in_bytes int64) of clips 0..n-1."""
    rng = np.random.default_rng(seed)
    ext = rng.integers(0, len(EXTS), n)
    dur = rng.uniform(60.0, 343.2, n)
    rate = np.array([INPUT_BYTES_PER_S[e] for e in EXTS], dtype=np.float64)[ext]
    size = np.floor(dur * rate * rng.uniform(0.8, 1.2, n)).astype(np.int64) + 1024
    return ext, dur, size


class ListingFileSystem(FileSystem):
    n = 0
    seed = 0

    @classmethod
    def scheme(cls):
        return "tmlist"

    def has_dirs(self):
        return False

    def _list(self, prefix):
        ext, _, size = sizes(self.n, self.seed)
        for i, (e, b) in enumerate(zip(ext.tolist(), size.tolist())):
            yield FileMetadata(f"tmlist://corpus/clip-{i:07d}{EXTS[e]}", b, 0.0)

    def exists(self, path):
        return False

    def join(self, base, *paths):
        return "/".join([base.rstrip("/"), *paths])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def _nope(self, *a, **kw):
        raise NotImplementedError("tmlist:// only lists")

    mkdirs = create = open = copy = rename = delete = size = last_updated = checksum = metadata = _nope
