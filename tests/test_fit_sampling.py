"""The fit job's deterministic frame sample, against a brute-force reference."""
import numpy as np
from hypothesis import given, settings, strategies as st

from tokenmill.pipelines.fit import BottomK, split_sample
from tokenmill.pipelines.ingest import frames_priority


def _segments(n_seg, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_seg):
        t = int(rng.integers(1, 60))
        key = f"{i:016x}-0000"
        out.append((frames_priority(key, t, 7), key, rng.standard_normal((t, 3)).astype(np.float32)))
    return out


@given(n_seg=st.integers(1, 12), k=st.integers(1, 80), seed=st.integers(0, 1000),
       split_at=st.integers(0, 12))
@settings(max_examples=60, deadline=None)
def test_bottom_k_equals_a_global_sort_whatever_the_partitioning(n_seg, k, seed, split_at):
    segs = _segments(n_seg, seed)
    fn = BottomK(k)
    # two "workers" with partial accumulators, merged in either order
    a, b = fn.create_accumulator(), fn.create_accumulator()
    for s in segs[:split_at]:
        a = fn.add_input(a, s)
    for s in segs[split_at:]:
        b = fn.add_input(b, s)
    got = fn.extract_output(fn.merge_accumulators([b, a]))
    flat = sorted((int(p), key, f.tobytes()) for pr, key, fs in segs for p, f in zip(pr, fs))[:k]
    assert [(p, key) for p, key, _ in got] == [(p, key) for p, key, _ in flat]
    assert all(f.tobytes() == fb for (_, _, f), (_, _, fb) in zip(got, flat))


def test_priorities_are_a_bijection_per_track_and_seeded():
    p = frames_priority("abc-0000", 100_000, 0)
    assert len(np.unique(p)) == len(p)
    assert not np.array_equal(p, frames_priority("abc-0000", 100_000, 1))
    assert np.array_equal(p[:10], frames_priority("abc-0000", 10, 0))  # prefix-stable


def test_split_sample_holds_out_a_fixed_subset():
    segs = _segments(10, 3)
    fn = BottomK(200)
    acc = fn.create_accumulator()
    for s in segs:
        acc = fn.add_input(acc, s)
    sample = fn.extract_output(acc)
    train, held, stats = split_sample(sample, 15)
    assert len(train) + len(held) == len(sample) and len(held) == min(15, len(sample) // 10)
    train2, held2, _ = split_sample(list(reversed(sample)), 15)
    assert np.array_equal(train, train2) and np.array_equal(held, held2)
    assert stats["n_tracks_sampled"] == len({k for _, k, _ in sample})
