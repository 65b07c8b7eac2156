"""The inference path the built-in window towers share (MuLan: 10 s windows, melody: 4 s; both at
a 1 s stride): each segment's log-mel is computed once and sliced per window
(windowing.feature_window_rows), and the tower runs on passes of those slices.

A class using this mixin has `net` with `.logmel` (float32 [B, n] → raw log-mel [B, M, F], an
uncentred STFT front end) and `.embed_mel` (raw log-mel [B, M, F_window] → [B, dim]), `cfg` with
`n_fft` and `hop`, and `device`, `sample_rate_hz`, `window_s`, `stride_s`. List it before the
family's interface class, so its `_window_rows` and `_embed_rows` replace the wave-window defaults.
"""
from __future__ import annotations

import numpy as np
import torch

from tokenmill.tokenizers import windowing


class LogMelWindowTower:
    def _window_rows(self, wave: np.ndarray):
        """Window w's raw log-mel: frames [w·stride·sr/hop, + F_window) of the segment's, computed once."""
        return windowing.feature_window_rows(wave, self._logmel, sample_rate_hz=self.sample_rate_hz,
                                             window_s=self.window_s, stride_s=self.stride_s,
                                             n_fft=self.cfg.n_fft, hop=self.cfg.hop)

    def _logmel(self, samples: np.ndarray) -> np.ndarray:
        """float32 [n] → raw log-mel float32 [n_mels, 1 + (n - n_fft) // hop]."""
        with torch.inference_mode():
            return self.net.logmel(torch.from_numpy(samples)[None].to(self.device))[0].cpu().numpy()

    def _embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """float32 [B, window_s · sr] window samples → float32 [B, dim], each window's own log-mel
        (the families' wave interface; the stage itself runs `_embed_rows` on sliced log-mel)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
            return self.net.embed_wave(x).cpu().numpy()

    def _embed_rows(self, mels: np.ndarray) -> np.ndarray:
        """float32 [B, n_mels, F_window] raw log-mel windows → float32 [B, dim]."""
        with torch.inference_mode():
            return self.net.embed_mel(torch.from_numpy(mels).to(self.device)).cpu().numpy()
