"""Launch cost of sizing shards by the data: listing a paper-scale corpus (5M clips, 280k hours).

`tokenize` lists its inputs once at launch (pipelines/ingest.list_inputs): the listing that
checks every pattern matches something also sums the files' sizes per extension, from which
schemas/shard_plan.py derives the shard counts. This bench lists a fake object store of N entries
with realistic sizes (tests/listing_fs.py: 60-340 s clips, 60 % MP3 / 25 % FLAC / 10 % Vorbis /
5 % WAV) through Beam FileSystems, each variant in its own child process, and prints wall time and
peak RSS of:

  * count only: the listing the launcher made before (`len(FileSystems.match(...).metadata_list)`);
  * list_inputs + plan: today's launch (one listing, sizes summed, plan derived);

and the ratio of the two (the extra launch cost of sizing by the data), plus the plan itself.

    python bench/bench_listing.py                 # 5,000,000 entries (about a minute, ~2 GB)
    python bench/bench_listing.py --n 1000000     # quick
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {tests!r})
from listing_fs import ListingFileSystem
ListingFileSystem.n = {n}
from apache_beam.io.filesystems import FileSystems
from tokenmill.pipelines.ingest import list_inputs
from tokenmill.schemas.shard_plan import plan_shards
STREAMS = {{"semantic": {{"frame_rate_hz": 25.0}}, "acoustic": {{"n_q": 12, "frame_rate_hz": 50.0}},
           "mulan": {{"dim": 128, "stride_s": 1}}}}
t0 = time.perf_counter()
if {variant!r} == "count":
    out = {{"files": len(FileSystems.match(["tmlist://corpus/*"])[0].metadata_list)}}
else:
    listing = list_inputs(("tmlist://corpus/*",))
    out = {{"files": listing.n_files, "plan": plan_shards(listing.bytes_by_ext, listing.n_files, STREAMS,
                                                       valid_fraction=0.05).to_json()}}
out["wall_s"] = time.perf_counter() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run(variant: str, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = CHILD.format(tests=str(ROOT / "tests"), n=n, variant=variant)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5_000_000, help="entries in the fake listing (default %(default)s)")
    a = ap.parse_args()
    count, sized = run("count", a.n), run("plan", a.n)
    p = sized["plan"]
    print(f"listing {a.n:,} entries through Beam FileSystems (one child process each)")
    print(f"{'variant':28s} {'wall s':>8s} {'peak RSS MB':>12s}")
    print(f"{'count only (before)':28s} {count['wall_s']:8.1f} {count['peak_rss_mb']:12.0f}")
    print(f"{'list_inputs + plan (now)':28s} {sized['wall_s']:8.1f} {sized['peak_rss_mb']:12.0f}")
    print(f"ratio now / before: wall {sized['wall_s'] / count['wall_s']:.2f}, peak RSS "
          f"{sized['peak_rss_mb'] / count['peak_rss_mb']:.2f}; per entry {1e6 * sized['wall_s'] / a.n:.1f} us")
    print(f"plan: {p['input_bytes'] / 1e12:.2f} TB of inputs, ~{p['est_audio_hours']:,.0f} h of audio, "
          f"{p['out_bytes_per_s']:.0f} B/s of arrays = {p['est_out_bytes'] / 1e12:.2f} TB -> "
          f"{p['num_shards']:,} train + {p['num_valid_shards']:,} valid shards of <= {p['target_shard_mb']:g} MiB")


if __name__ == "__main__":
    main()
