"""Multi-scale STFT discriminator (EnCodec, Défossez et al. 2022): one 2-D conv net per FFT size on
the complex STFT (real and imaginary parts as two channels), returning logits and feature maps."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiscConfig:
    channels: int = 16
    ffts: tuple[int, ...] = (1024, 512, 256)
    dilations: tuple[int, ...] = (1, 2, 4)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ffts", tuple(int(x) for x in self.ffts))
        object.__setattr__(self, "dilations", tuple(int(x) for x in self.dilations))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DiscConfig:
        return cls(**json.loads(text))


def _wn(m: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(m)


class STFTDiscriminator(nn.Module):
    def __init__(self, n_fft: int, ch: int, dilations: tuple[int, ...]):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        convs = [_wn(nn.Conv2d(2, ch, (3, 9), padding=(1, 4)))]
        for d in dilations:  # time dilation, frequency stride 2 (input is [B, 2, frames, freq])
            convs.append(_wn(nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4))))
        convs.append(_wn(nn.Conv2d(ch, ch, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.out = _wn(nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor):
        x = wave.reshape(-1, wave.shape[-1])
        spec = torch.stft(x, self.n_fft, self.n_fft // 4, window=self.window, return_complex=True,
                          normalized=True, center=True, pad_mode="constant")
        h = torch.stack([spec.real, spec.imag], 1).transpose(2, 3)  # [B, 2, frames, freq]
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            feats.append(h)
        return self.out(h), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, cfg: DiscConfig = DiscConfig()):
        super().__init__()
        self.cfg = cfg
        self.discs = nn.ModuleList(STFTDiscriminator(n, cfg.channels, cfg.dilations) for n in cfg.ffts)

    def forward(self, wave: torch.Tensor):
        """wave [B, 1, n] → (logits per scale, feature maps per scale)."""
        logits, feats = [], []
        for d in self.discs:
            lg, ft = d(wave)
            logits.append(lg)
            feats.append(ft)
        return logits, feats
