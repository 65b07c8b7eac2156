"""Codec trainer: deterministic crops, exact resume, checkpoint export, and loss/metric values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenmill.tokenizers.codec import build_codec
from tokenmill.cli import main
from tokenmill.training.codec_train import PRESETS, CropSource, TrainArgs, Trainer
from tokenmill.training.discriminators import DiscConfig
from tokenmill.training.losses import (
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    mel_distance,
    multiscale_mel_loss,
    si_snr,
)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


TINY_ARGS = TrainArgs(batch=2, crop_min_s=0.2, crop_max_s=0.3, vq_start=1, disc_start=2)
TINY_DISC = DiscConfig(channels=2, ffts=(256, 128))


@pytest.fixture(scope="module")
def source(real_audio_dir) -> CropSource:
    files = sorted(str(p) for p in real_audio_dir.iterdir())[:3]
    return CropSource(files, None, seed=0)


def test_crops_depend_on_seed_and_step_only(source):
    a = source.batch(5, 2, 0.2, 0.3)
    again = CropSource(source.files, None, seed=0).batch(5, 2, 0.2, 0.3)
    assert np.array_equal(a, again) and a.dtype == np.float32 and a.shape[1] % 480 == 0
    assert not np.array_equal(a, source.batch(6, 2, 0.2, 0.3)[:, :a.shape[1]])


def run_steps(trainer: Trainer, source: CropSource, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        out.append(trainer.train_step(source.batch(trainer.step, trainer.args.batch,
                                                   trainer.args.crop_min_s, trainer.args.crop_max_s)))
    return out


def test_resume_continues_with_identical_state(source, tmp_path):
    straight = Trainer(PRESETS["tiny"], TINY_DISC, TINY_ARGS)
    losses = run_steps(straight, source, 4)
    assert next(x["n_q"] for x in losses) == 0 and min(x["n_q"] for x in losses[1:]) > 0  # AE warm-up
    assert "adv" in losses[2] and "adv" not in losses[1]  # discriminator after its warm-up
    first = Trainer(PRESETS["tiny"], TINY_DISC, TINY_ARGS)
    assert run_steps(first, source, 2) == losses[:2]
    first.save(tmp_path / "ckpt.safetensors")
    resumed = Trainer.load(tmp_path / "ckpt.safetensors")
    assert resumed.step == 2
    assert run_steps(resumed, source, 2) == losses[2:]  # steps 3-4: exactly equal
    for (k, v), (k2, v2) in zip(straight.gen.state_dict().items(), resumed.gen.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_cli_trains_resumes_and_exports(real_audio_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train-codec", "--data", str(real_audio_dir / "*.flac"), "--output", str(out), "--threads", "1",
              "--log_every_s", "0", "--ckpt_every", "2", "--no_cache"]
    assert main(common + ["--steps", "3", "--preset", "tiny", "--batch", "1", "--crop_min_s", "0.2",
                          "--crop_max_s", "0.2", "--vq_start", "1", "--disc_start", "2"]) == 0
    assert main(common + ["--steps", "4", "--resume"]) == 0
    log = capsys.readouterr().out
    assert "step 3 " in log and "resumed from" in log and "step 4 " in log and "audio-s/s" in log
    assert Trainer.load(out / "ckpt-latest.safetensors").step == 4
    target = tmp_path / "codec.safetensors"
    assert main(["train-codec", "--export", str(out / "ckpt-latest.safetensors"), "--output", str(target)]) == 0
    codec = build_codec("soundstream", path=target)
    assert codec.metadata["step"] == "4"
    wave = np.sin(np.linspace(0, 300, 4800)).astype(np.float32)
    assert codec.encode(wave).shape == (12, 10)


# ---- losses and metrics -----------------------------------------------------------------------

def test_si_snr_and_mel_distance_values():
    t = np.arange(24000) / 24000
    ref = np.sin(2 * np.pi * 100 * t)
    noise = 0.1 * np.cos(2 * np.pi * 100 * t)  # orthogonal over whole periods, 1/100 of the energy
    assert si_snr(ref, ref + noise) == pytest.approx(20.0, abs=1e-6)
    assert si_snr(ref, 3.0 * ref) > 100  # scale-invariant
    assert mel_distance(ref, ref) == 0.0
    assert mel_distance(ref, ref + noise) < mel_distance(ref, np.zeros_like(ref))


def test_gan_losses_hand_values():
    real = [torch.tensor([2.0, 0.5]), torch.tensor([-1.0])]
    fake = [torch.tensor([-2.0, 0.0]), torch.tensor([0.5])]
    # disc 1: relu(1-r) = [0, .5] -> .25; relu(1+f) = [0, 1] -> .5. disc 2: 2 + 1.5.
    assert hinge_d_loss(real, fake).item() == pytest.approx((0.75 + 3.5) / 2)
    assert hinge_g_loss(fake).item() == pytest.approx((2.0 + 0.5) / 2)  # relu(1-f): [3, 1] -> 2; .5
    r = [[torch.tensor([1.0, -1.0])]]
    f = [[torch.tensor([1.5, -1.0])]]
    assert feature_matching_loss(r, f).item() == pytest.approx(0.25, rel=1e-6)
    x = torch.randn(1, 1, 4800, generator=torch.Generator().manual_seed(0))
    assert multiscale_mel_loss(x, x, 24000).item() == 0.0
