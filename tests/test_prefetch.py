"""training/prefetch.py: the background prefetcher yields the synchronous StageBatches stream
(batches, reader states and cropper counts, batch for batch, over several epochs), resumes from a
state taken while batches were waiting in its queue, re-raises the stream's exceptions at the
batch they belong to, stops its thread; the trainer with --prefetch 2 gives the losses and weights
of --prefetch 0, across a resume.

The dataset is test_train's hand-built one (5 records, one padded), read as one semantic stream
of batches of 2, so 12 batches cover about five epochs and cross every epoch boundary kind.
"""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from helpers import make_rvq
from helpers import train_config as config
from helpers import train_dataset as dataset

from tokenmill.training import checkpoint as ckpt
from tokenmill.training import train as tr
from tokenmill.training.batches import StageBatches
from tokenmill.training.crops import CropConfig, CropError, StageCropper, StreamLayout
from tokenmill.training.data import ReaderError, ShardReader
from tokenmill.training.prefetch import PrefetchedBatches
from tokenmill.training.stages import StageLayout

pytestmark = pytest.mark.usefixtures("torch_one_thread")
N = 12  # batches compared


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefetch")
    rvq = make_rvq(tmp)
    return {"root": dataset(tmp / "ds", rvq), "rvq": rvq, "tmp": tmp}


def stream(root, short_tracks: str = "pad") -> StageBatches:
    """The semantic stream the trainer builds (without M), batches of 2, shuffle buffer 3."""
    reader = ShardReader(str(root), splits=("train",), seed=0, shuffle_buffer=3, resample=True)
    crop_cfg = CropConfig(2.0, 1.0, 0.4, short_tracks, mulan_stages=())
    layout = StageLayout.from_manifest("semantic", reader.manifest, crop_cfg)
    cropper = StageCropper("semantic", StreamLayout.from_manifest(reader.manifest), crop_cfg, seed=0)
    return StageBatches(reader, cropper, layout, 2)


def take(batches, n: int) -> list[tuple[np.ndarray, dict, dict]]:
    """n × (batch, state_dict, progress) read after each next()."""
    return [(next(batches), batches.state_dict(), batches.progress()) for _ in range(n)]


def assert_same(got, want, since: tuple[dict, dict] | None = None) -> None:
    """Same batches, states and progress. `since` (got's, want's counts at a restore): compare the
    counts made since then (a restored cropper counts from where it was, like the trainer's)."""
    assert len(got) == len(want)
    for i, ((b, st, pr), (b0, st0, pr0)) in enumerate(zip(got, want)):
        assert np.array_equal(b, b0), f"batch {i}"
        assert st == st0, f"state after batch {i}"
        if since is None:
            assert pr == pr0, f"progress after batch {i}"
        else:
            assert ({k: v - since[0][k] for k, v in pr["counts"].items()}
                    == {k: v - since[1][k] for k, v in pr0["counts"].items()}), f"counts after batch {i}"


@pytest.fixture(scope="module")
def reference(data):
    """The synchronous stream: N × (batch, state, progress)."""
    return take(stream(data["root"]), N)


def wait_full(p: PrefetchedBatches) -> None:
    """Until the producer has filled the queue (it is then blocked, and ahead of the consumer)."""
    deadline = time.monotonic() + 10
    while not p._queue.full():
        assert time.monotonic() < deadline, "the producer did not fill its queue in 10 s"
        time.sleep(0.01)


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetched_stream_is_the_synchronous_stream(data, reference, depth):
    epochs = {st["epoch"] for _, st, _ in reference}
    assert len(epochs) >= 4 and reference[-1][2]["counts"]["padded"] >= 4  # several epochs, padding counted
    p = PrefetchedBatches(stream(data["root"]), depth)
    assert p.state_dict() == stream(data["root"]).state_dict() and not p.alive  # lazy: nothing read yet
    got = take(p, 1)
    wait_full(p)  # the reader is now `depth` batches ahead, yet the state is the consumed batch's
    ahead = p.source.reader.state_dict()
    assert (ahead["epoch"], ahead["yielded"]) != (reference[0][1]["epoch"], reference[0][1]["yielded"])
    assert_same(got + take(p, N - 1), reference)
    p.close()


def test_resume_from_a_state_taken_while_prefetched(data, reference):
    p = PrefetchedBatches(stream(data["root"]), 2)
    take(p, 3)
    wait_full(p)
    state = p.state_dict()
    assert state == reference[2][1]
    # a new process: a fresh reader restored from that state continues the uninterrupted stream
    q = PrefetchedBatches(stream(data["root"]), 2)
    q.load_state_dict(state)
    since = (q.counts, reference[2][2]["counts"])
    assert_same(take(q, N - 3), reference[3:], since)
    # the same prefetcher sent back to batch 1: its queued batches are dropped, not delivered;
    # its counts are those of the 3 batches consumed, not of the ones it had prefetched
    p.load_state_dict(reference[0][1])
    assert p.counts == reference[2][2]["counts"]
    since = (p.counts, reference[0][2]["counts"])
    assert_same(take(p, 4), reference[1:5], since)
    # close() drops the queue; the next batch is still the one after the last consumed, with the
    # counts as of that batch
    wait_full(p)
    counts = p.counts
    p.close()
    assert not p.alive and p.counts == counts
    assert_same(take(p, 3), reference[5:8], (counts, reference[4][2]["counts"]))
    for x in (p, q):
        x.close()


class Failing(StageBatches):
    """Raises `exc` instead of forming batch `at`."""

    def __init__(self, source: StageBatches, at: int, exc: BaseException) -> None:
        self.__dict__.update(source.__dict__)
        self.at, self.exc, self.n = at, exc, 0

    def __next__(self):
        if self.n == self.at:
            raise self.exc
        self.n += 1
        return super().__next__()


def test_exception_at_batch_k_surfaces_at_the_kth_next(data, reference):
    class Boom(RuntimeError):
        pass

    p = PrefetchedBatches(Failing(stream(data["root"]), 4, Boom("shard 3: HTTP 503")), 2)
    assert_same(take(p, 4), reference[:4])
    for _ in range(2):  # the stream ended in error: every later next() raises it again
        with pytest.raises(Boom, match=r"^shard 3: HTTP 503$"):
            next(p)
    assert p.state_dict() == reference[3][1] and not p.alive


def test_reader_failure_in_the_second_epoch_is_raised_where_the_sync_stream_raises(data):
    def failing_stream() -> StageBatches:  # the shard load of the second epoch fails
        s = stream(data["root"])
        load, calls = s.reader._load, []

        def flaky(spec):
            calls.append(spec)
            if len(calls) == 2:
                raise ReaderError(f"{spec.url}: HTTP 503 after 3 tries")
            return load(spec)
        s.reader._load = flaky
        return s

    def until_error(batches) -> tuple[list, BaseException]:
        out = []
        while True:
            try:
                out.append((next(batches), batches.state_dict(), batches.progress()))
            except ReaderError as e:
                return out, e
    want, want_e = until_error(failing_stream())
    got, got_e = until_error(PrefetchedBatches(failing_stream(), 2))
    assert len(want) >= 2  # the first epoch's batches came through
    assert_same(got, want)
    assert type(got_e) is type(want_e) and str(got_e) == str(want_e) and "HTTP 503" in str(got_e)


def test_epoch_without_crops_raises_crop_error_and_stops(tmp_path, data):
    root = dataset(tmp_path / "short", data["rvq"], seconds=0.6, short_s=None)  # all shorter than the 2 s crop
    with pytest.raises(CropError) as sync_e:
        next(stream(root, short_tracks="skip"))
    p = PrefetchedBatches(stream(root, short_tracks="skip"), 2)
    with pytest.raises(CropError) as e:
        next(p)
    assert str(e.value) == str(sync_e.value) and "short_tracks='pad'" in str(e.value)
    assert not p.alive
    # the trainer: the error reaches run()'s caller and no prefetch thread is left running
    with pytest.raises(CropError, match="no semantic crop"):
        tr.run(config({**data, "root": root}, tmp_path / "o", stage="semantic", short_tracks="skip"))
    alive = [t for t in threading.enumerate() if t.name == "tokenmill-prefetch" and t.is_alive()]
    for t in alive:
        t.join(2)  # only threads of other, unclosed prefetchers of this process could remain
    assert not [t for t in alive if t.is_alive()]


def test_close_and_garbage_collection_stop_the_thread(data):
    p = PrefetchedBatches(stream(data["root"]), 2)
    next(p)
    wait_full(p)
    thread = p._thread
    p.close()
    assert not thread.is_alive() and not p.alive
    p.close()  # idempotent
    q = PrefetchedBatches(stream(data["root"]), 2)
    next(q)
    wait_full(q)
    thread = q._thread
    del q
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()  # an unclosed, dropped prefetcher does not leak its thread


def test_trainer_prefetch_2_gives_the_losses_and_weights_of_prefetch_0_across_a_resume(data, tmp_path):
    kw = {"stage": "coarse", "steps": 6, "batch_size": 2, "shuffle_buffer": 3}
    sync = tr.run(config(data, tmp_path / "a", prefetch=0, **kw))
    assert isinstance(sync["trainer"].batches, StageBatches)
    half = tr.run(config(data, tmp_path / "b", prefetch=2, **{**kw, "steps": 3}))
    assert not half["trainer"].batches.alive  # run() closed it
    rest = tr.run(config(data, tmp_path / "b", prefetch=2, resume=True, **kw))
    assert half["losses"] + rest["losses"] == sync["losses"]
    assert rest["counts"] == {k: v - half["counts"][k] for k, v in sync["counts"].items()}
    wa, wb = (load_file(str(ckpt.resolve(tmp_path / d) / ckpt.MODEL_FILE)) for d in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (ckpt.read_state(tmp_path / d)[1] for d in "ab")
    assert sa["reader"] == sb["reader"]  # the position after the last batch trained on


def test_cli_prefetch_option():
    from tokenmill.cli import build_parser
    from tokenmill.cli.train import train_config

    def config(argv):
        return train_config(build_parser("train").parse_args(["train", *argv]))

    base = ["--stage", "fine", "--data", "x", "--output", "o"]
    assert config(base).prefetch == 2
    assert config(base + ["--prefetch", "0"]).prefetch == 0
    with pytest.raises(tr.TrainError, match="prefetch must be >= 0"):
        config(base + ["--prefetch", "-1"])
