"""A segment's tokens do not depend on what else is in its RunInference batch: for each built-in
model stage (SoundStream codec, MuLan windows + RVQ tokens, spectral semantic features + k-means),
the handler's run_inference on the segment alone equals its result inside batches of other
segments (equal lengths, which a GPU path would stack into one forward pass, and other lengths),
in either order, and equals a direct call of the pure model code. Which segments share a batch
depends on the runner's bundles, so this is what makes outputs equal across runners."""
from __future__ import annotations

import numpy as np
import pytest

from tokenmill.pipelines.handlers import AcousticTokenHandler, SemanticTokenHandler
from tokenmill.pipelines.ingest import SegmentInput
from tokenmill.pipelines.mulan import MulanTokenHandler, MulanWindowHandler
from tokenmill.pipelines.options import AcousticConfig, MulanConfig, SemanticConfig
from tokenmill.schemas import rates
from tokenmill.tokenizers import audio
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.mulan import segment_tokens
from tokenmill.tokenizers.semantic import build_extractor

pytestmark = pytest.mark.usefixtures("torch_one_thread")
RATES = (16_000, 24_000)


def _devices() -> list[str]:
    """The CPU, and CUDA where this machine has it: on a GPU, SoundStream stacks equal-length
    segments into one forward pass (the case batch composition could change)."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def as_input(s) -> SegmentInput:
    return SegmentInput(key=s.key, uri="x", segment=s.segment, start_s=s.start_s, duration_s=s.duration_s,
                        n_quanta=s.n_quanta, source_sample_rate=s.source_sample_rate,
                        source_channels=s.source_channels, waves=dict(s.waves))


def cut(seg: SegmentInput, seconds: float) -> SegmentInput:
    """The first `seconds` (a multiple of 40 ms) of a segment: another length in the batch."""
    q = round(seconds / 0.04)
    waves = {r: w[: q * r // 25] for r, w in seg.waves.items()}
    return SegmentInput(key=seg.key[:-4] + "0099", uri=seg.uri, segment=99, start_s=0.0, duration_s=q * 0.04,
                        n_quanta=q, source_sample_rate=seg.source_sample_rate,
                        source_channels=seg.source_channels, waves=waves)


@pytest.fixture(scope="module")
def segments(real_audio_dir) -> list[SegmentInput]:
    """[target, same-length partner, same-length partner of another track, a 7.52 s segment, a 3.2 s cut]."""
    cfg = audio.AudioConfig(target_rates_hz=RATES, max_segment_s=11)
    a = [as_input(s) for s in audio.prepare((real_audio_dir / "pushover_greek.flac").read_bytes(), "a", cfg)]
    b = [as_input(s) for s in audio.prepare((real_audio_dir / "asc_frontiers.mp3").read_bytes(), "b", cfg)]
    c = [as_input(s) for s in audio.prepare((real_audio_dir / "singularity_through_space.opus").read_bytes(), "c", cfg)]
    segs = [a[0], a[1], b[0], c[0], cut(b[1], 3.2)]
    assert [s.duration_s for s in segs] == [10.0, 10.0, 10.0, 7.52, 3.2]
    return segs


def results(handler, model, batch):
    return [r.inference for r in handler.run_inference(batch, model)]


def check_invariant(handler, segs, equal) -> list:
    """The target's result alone equals it inside four batches (both orders of all five, with its
    equal-length partners only, with the other lengths only); returns (it, the loaded model)."""
    model = handler.load_model()
    alone = results(handler, model, [segs[0]])[0]
    for batch, pos in ((segs, 0), (segs[::-1], len(segs) - 1), ([segs[1], segs[0], segs[2]], 1),
                       ([segs[3], segs[4], segs[0]], 2)):
        equal(results(handler, model, batch)[pos], alone)
    return alone, model


@pytest.mark.parametrize("device", _devices())
def test_soundstream_codes_do_not_depend_on_the_batch(segments, device):
    handler = AcousticTokenHandler(AcousticConfig(codec="soundstream", batch_size=8, device=device))
    alone, codec = check_invariant(handler, segments, np.testing.assert_array_equal)
    np.testing.assert_array_equal(alone, codec.encode(segments[0].waves[24_000]))   # the pure code
    assert alone.dtype == np.uint16 and alone.shape == (12, rates.frames_for_quanta(segments[0].n_quanta, rates.ACOUSTIC))


@pytest.mark.parametrize("device", _devices())
def test_mulan_windows_and_tokens_do_not_depend_on_the_batch(segments, device):
    def equal(got, want):
        np.testing.assert_array_equal(got["mulan_windows"], want["mulan_windows"])
        np.testing.assert_array_equal(got["mulan"], want["mulan"])

    handler = MulanTokenHandler(MulanConfig(model="mulan", batch_size=16, device=device))
    alone, tok = check_invariant(handler, segments, equal)
    direct = tok.model.embed_audio_windows(segments[0].waves[16_000]).astype(np.float16)
    np.testing.assert_array_equal(alone["mulan_windows"], direct)
    np.testing.assert_array_equal(alone["mulan"], segment_tokens(direct, tok.rvq))
    # the fit's handler (float32 windows) too
    fit_handler = MulanWindowHandler(MulanConfig(model="mulan", batch_size=16, device=device))
    check_invariant(fit_handler, segments, np.testing.assert_array_equal)


def test_spectral_tokens_do_not_depend_on_the_batch(segments, tmp_path):
    ext = build_extractor("spectral")
    fit_kmeans(np.concatenate([ext.extract(s.waves[16_000]) for s in segments]), 32, seed=0,
               kind="semantic").save(tmp_path)
    handler = SemanticTokenHandler(SemanticConfig(extractor="spectral", batch_size=8), str(tmp_path))
    alone, tok = check_invariant(handler, segments, np.testing.assert_array_equal)
    np.testing.assert_array_equal(alone, tok.codebook.assign(ext.extract(segments[0].waves[16_000])))
    assert alone.shape == (rates.frames_for_quanta(segments[0].n_quanta, rates.SEMANTIC),)
