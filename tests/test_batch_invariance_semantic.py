"""A segment's semantic tokens do not depend on what else is in its RunInference batch, for the
semantic extractors test_batch_invariance.py does not cover: the default 'melodic' model (packaged
weights), 'basic-pitch' (the packaged ONNX model run by torch) and an SSL model (a tiny random
HuBERT saved with save_pretrained and loaded through --semantic_path). For each, a small k-means
codebook is fitted on the extractor's features of the segments; SemanticTokenHandler's
run_inference on the target segment alone equals its result inside batches of other segments (equal
lengths and other lengths, in either order), and equals the codebook's assignment of the pure
extractor's features, built separately. The features themselves are compared too: extract alone
equals extract_batch with the other segments."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import check_invariant, invariance_segments, torch_devices
from tokenmill.pipelines.handlers import SemanticTokenHandler
from tokenmill.pipelines.options import SemanticConfig
from tokenmill.schemas import rates
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.semantic import build_extractor

pytestmark = pytest.mark.usefixtures("torch_one_thread")
SR = rates.SEMANTIC.sample_rate_hz  # 16 kHz
K = 32  # codebook size: small, so the fit takes well under a second
HUBERT_LAYERS = 2  # a tiny HuBERT; the job takes hidden_states[2] (--semantic_layer 2)


# ---- segments: the same five as test_batch_invariance.py (tests/helpers.py) --------------------

@pytest.fixture(scope="module")
def segments(real_audio_dir) -> list:
    return invariance_segments(real_audio_dir)


# ---- a tiny HuBERT checkpoint ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    """A randomly initialised HubertModel (widths 16/32, 2 layers; HubertConfig's conv strides,
    product 320 = 50 Hz at 16 kHz) and its feature extractor, saved with save_pretrained: the
    directory --semantic_path takes."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    model = transformers.HubertModel(transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=HUBERT_LAYERS, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).eval()
    d = tmp_path_factory.mktemp("hubert")
    model.save_pretrained(d)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True).save_pretrained(d)
    return d


# ---- the checks --------------------------------------------------------------------------------

def check_semantic_stage(segs, tmp_path, cfg: SemanticConfig, extractor_kwargs: dict,
                         standardize: bool = False) -> None:
    """Fit a K-entry codebook on the features of `segs` (standardized, as fit-codebook does for SSL
    extractors), then: features alone == inside extract_batch, tokens alone == inside four
    batches, tokens == codebook.assign(the separately built extractor's features)."""
    ext = build_extractor(cfg.extractor, **extractor_kwargs)
    waves = [s.waves[SR] for s in segs]
    feats = [ext.extract(w) for w in waves]
    fit_kmeans(np.concatenate(feats), K, seed=0, kind="semantic", standardize=standardize).save(tmp_path)
    handler = SemanticTokenHandler(cfg, str(tmp_path))
    alone, tok = check_invariant(handler, segs, np.testing.assert_array_equal)
    # the pure model code: another extractor object, and the loaded codebook's nearest centroid
    np.testing.assert_array_equal(alone, tok.codebook.assign(feats[0]))
    assert alone.dtype == np.uint16 and alone.shape == (rates.frames_for_quanta(segs[0].n_quanta, rates.SEMANTIC),)
    assert len(np.unique(alone)) > 1  # the target's frames do not all fall in one cluster
    # features: the worker's extractor, alone and inside a batch of the other four, in both orders
    target = tok.extractor.extract(waves[0])
    np.testing.assert_array_equal(target, feats[0])
    np.testing.assert_array_equal(tok.extractor.extract_batch(waves)[0], target)
    np.testing.assert_array_equal(tok.extractor.extract_batch(waves[::-1])[-1], target)


def test_melodic_tokens_do_not_depend_on_the_batch(segments, tmp_path):
    check_semantic_stage(segments, tmp_path, SemanticConfig(extractor="melodic", batch_size=8), {})


def test_basic_pitch_tokens_do_not_depend_on_the_batch(segments, tmp_path):
    cfg = SemanticConfig(extractor="basic-pitch", batch_size=8, extractor_config=(("runtime", "torch"),))
    check_semantic_stage(segments, tmp_path, cfg, {"runtime": "torch"})


@pytest.mark.parametrize("device", torch_devices())
def test_hubert_tokens_do_not_depend_on_the_batch(segments, tmp_path, tiny_hubert, device):
    cfg = SemanticConfig(extractor="hubert", batch_size=8, path=str(tiny_hubert), layer=HUBERT_LAYERS,
                         device=device)
    check_semantic_stage(segments, tmp_path, cfg,
                         {"path": str(tiny_hubert), "layer": HUBERT_LAYERS, "device": device}, standardize=True)
