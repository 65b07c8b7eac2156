"""Adapters to published acoustic codecs, loaded through transformers `from_pretrained(path)`.

`build_codec("encodec" | "dac" | "mimi", path=DIR, ...)` where DIR is a transformers
`save_pretrained` directory (a Hub snapshot works: config.json + *.safetensors). Nothing is
downloaded. Each adapter declares its own sample rate, hop, depth and codebook size, read from the
model config; the manifest records them (`describe()`), so nothing downstream assumes 50 Hz × 12.

  encodec  EncodecModel, 24 kHz mono. n_q from `bandwidth_kbps` (one of config.target_bandwidths):
           n_q = floor(kbps·1000 / (frame_rate · log2(codebook_size))); 24 kHz: 1.5/3/6/12/24 kbps
           → 2/4/8/16/32 levels at 75 Hz (hop = prod(upsampling_ratios) = 320).
  dac      DacModel. n_q = `n_q` (default: config.n_codebooks); hop = config.hop_length.
  mimi     MimiModel. n_q = `n_q` or `num_quantizers` (default: config.num_quantizers); 12.5 Hz
           at 24 kHz (hop = config.frame_size = 1920). Level 1 is Mimi's semantic codebook.

Frame count contract (codec.py: T = ceil(n / hop)), measured on transformers 5.24:
  encodec  causal convs pad the tail themselves: model.encode gives ceil(n/hop) frames for any n,
           and model.decode of T frames gives exactly T·hop samples. Used as is.
  dac      symmetric convs with kernel 2s: unpadded input gives floor-like counts (4000 samples,
           hop 320 → 12 frames, not 13) and fails outright below ~hop samples. We zero-pad the
           wave on the right to T·hop, as DacFeatureExtractor(pad_to_multiple_of=hop_length)
           does, which gives T frames exactly. Decode of T frames gives T·hop minus a few samples
           when a stride is odd (24 kHz ratios [2,4,5,8]: T·320 − 8); we zero-pad the tail to T·hop.
  mimi     causal convs like EnCodec: ceil(n/hop) frames, decode gives T·hop. Used as is.
Fewer levels in decode (levels < n_q): all three HF decoders sum the per-level embeddings of
however many rows they get (EncodecResidualVectorQuantizer.decode, DacResidualVectorQuantizer
.from_codes, MimiSplitResidualVectorQuantizer.decode), so codes[:k] decode through the model's own
`decode` for any 1 <= k <= n_q.

Not supported (CodecError at load): EnCodec 48 kHz (stereo, chunked with overlap-add and a
per-chunk scale that codes alone cannot carry) and any EnCodec config with normalize=True.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill.tokenizers.codec import (
    AcousticCodec,
    CodecError,
    resolve_device,
    sha256_of_files,
)

_ADAPTER_TYPES = {"encodec": "encodec", "dac": "dac", "mimi": "mimi"}  # model_type → codec name


def _read_checkpoint_dir(name: str, model_type: str, path: Any) -> tuple[Path, list[Path]]:
    """Check that `path` is a save_pretrained directory of `model_type`; return it and its weights."""
    if path is None:
        raise CodecError(f"{name}: needs path=DIR, a transformers save_pretrained directory "
                         f"of a {model_type} model")
    d = Path(path)
    if not d.is_dir():
        raise CodecError(f"{name}: checkpoint directory {str(d)!r} does not exist "
                         "(expected a transformers save_pretrained directory)")
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise CodecError(f"{name}: {str(d)!r} has no config.json; not a transformers "
                         "save_pretrained directory")
    try:
        found = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise CodecError(f"{name}: cannot read {str(cfg_file)!r}: {e}") from e
    if found != model_type:
        fix = (f"; use --acoustic_codec {_ADAPTER_TYPES[found]}" if found in _ADAPTER_TYPES
               else "; this is not an EnCodec, DAC or Mimi checkpoint")
        raise CodecError(f"{name}: {str(cfg_file)!r} says model_type {found!r}, "
                         f"expected {model_type!r}{fix}")
    weights = sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin"))
    if not weights:
        raise CodecError(f"{name}: {str(d)!r} has config.json but no *.safetensors or *.bin "
                         "weights; not a complete save_pretrained directory")
    return d, weights


class _HFCodec(AcousticCodec):
    """Shared loading, validation and tensor plumbing; subclasses set `_model_cls` and rates."""

    model_type: str
    _model_cls: str  # attribute of the transformers package

    def __init__(self, path: Any = None, device: str = "cpu", **unknown: Any) -> None:
        import torch
        import transformers

        if unknown:
            raise CodecError(f"{self.name}: unknown option(s) {', '.join(sorted(unknown))}")
        self.device = resolve_device(self.name, device, CodecError)
        d, weights = _read_checkpoint_dir(self.name, self.model_type, path)
        try:
            model = getattr(transformers, self._model_cls).from_pretrained(str(d), dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as e:
            raise CodecError(f"{self.name}: {self._model_cls}.from_pretrained({str(d)!r}) failed: {e}") from e
        self.model = model.to(self.device).eval()
        self.hf_config = self.model.config
        self.weights_sha256 = sha256_of_files(weights)
        self._check_preprocessor(d)

    def _check_preprocessor(self, d: Path) -> None:
        """A Hub snapshot carries the feature extractor's config: its rate must agree with the model's."""
        f = d / "preprocessor_config.json"
        if not f.is_file():
            return
        try:
            sr = json.loads(f.read_text()).get("sampling_rate")
        except (OSError, ValueError, AttributeError) as e:
            raise CodecError(f"{self.name}: cannot read {str(f)!r}: {e}") from e
        model_sr = int(self.hf_config.sampling_rate)
        if sr is not None and int(sr) != model_sr:
            raise CodecError(f"{self.name}: {str(f)!r} says sampling_rate {sr} but config.json "
                             f"says {model_sr}")

    # --- tensor plumbing -------------------------------------------------------------------
    def _wave_tensor(self, wave: np.ndarray):
        import torch

        return torch.from_numpy(wave).to(self.device).view(1, 1, -1)

    def _codes_tensor(self, codes: np.ndarray):
        import torch

        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise CodecError(f"{self.name}: codes outside [0, {self.codebook_size})")
        return torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)).to(self.device)

    def _fit_frames(self, codes, n_samples: int) -> np.ndarray:
        """[n_q, T] tensor → int64 array, checked to be [n_q, ceil(n/hop)]; a mismatch means the model broke the
        contract we measured, so fail loudly rather than invent frames."""
        out = codes.detach().cpu().numpy().astype(np.int64)
        want = self.n_frames(n_samples)
        if out.shape != (self.n_q, want):
            raise CodecError(f"{self.name}: model gave codes {out.shape} for {n_samples} samples, "
                             f"expected {(self.n_q, want)}")
        return out

    def _fit_samples(self, audio, n_frames: int) -> np.ndarray:
        """Decoded [.., L] tensor → float32 [T·hop]: trim, or zero-pad a short tail."""
        out = audio.detach().float().cpu().numpy().reshape(-1)
        want = n_frames * self.hop_samples
        if out.shape[0] >= want:
            return out[:want].copy()
        return np.pad(out, (0, want - out.shape[0]))

    def _encode(self, wave: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._fit_frames(self._hf_encode(wave), wave.shape[0])

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._fit_samples(self._hf_decode(self._codes_tensor(codes)), codes.shape[1])

    def _hf_encode(self, wave: np.ndarray):
        """float32 [n] → codes tensor [n_q, T]."""
        raise NotImplementedError

    def _hf_decode(self, codes):
        """int64 tensor [levels, T] → audio tensor [..., L]."""
        raise NotImplementedError

    def _base_config(self) -> dict[str, Any]:
        c = self.hf_config
        return {"model_type": self.model_type, "transformers_class": self._model_cls,
                "sampling_rate": int(c.sampling_rate), "codebook_size": int(c.codebook_size),
                "n_q": self.n_q}


class EncodecCodec(_HFCodec):
    """EnCodec (24 kHz mono). `bandwidth_kbps` picks the depth; default 6 kbps (8 levels at 75 Hz)."""

    name = "encodec"
    model_type = "encodec"
    _model_cls = "EncodecModel"

    def __init__(self, path: Any = None, bandwidth_kbps: float = 6.0, device: str = "cpu",
                 **unknown: Any) -> None:
        super().__init__(path=path, device=device, **unknown)
        c = self.hf_config
        if int(c.audio_channels) != 1 or c.chunk_length_s is not None:
            raise CodecError(f"encodec: only mono, unchunked EnCodec (the 24 kHz model) is supported; "
                             f"this config has audio_channels={c.audio_channels}, "
                             f"chunk_length_s={c.chunk_length_s} (the 48 kHz stereo model?)")
        if c.normalize:
            raise CodecError("encodec: config.normalize=True needs a per-clip scale that codes alone "
                             "cannot carry; unsupported")
        bandwidths = [float(b) for b in c.target_bandwidths]
        if float(bandwidth_kbps) not in bandwidths:
            raise CodecError(f"encodec: bandwidth_kbps {bandwidth_kbps} is not one of this model's "
                             f"target_bandwidths {bandwidths}")
        self.bandwidth_kbps = float(bandwidth_kbps)
        self.sample_rate_hz = int(c.sampling_rate)
        self.hop_samples = int(np.prod(c.upsampling_ratios))
        self.codebook_size = int(c.codebook_size)
        # EnCodec's own rule (EncodecResidualVectorQuantizer.get_num_quantizers_for_bandwidth):
        # bits per level per second = frame_rate · log2(codebook_size), frame_rate = ceil(sr / hop).
        bits_per_level = math.ceil(self.sample_rate_hz / self.hop_samples) * math.log2(self.codebook_size)
        self.n_q = max(1, math.floor(self.bandwidth_kbps * 1000 / bits_per_level))
        if self.n_q > int(c.num_quantizers):
            raise CodecError(f"encodec: {bandwidth_kbps} kbps needs {self.n_q} levels, the model has "
                             f"{c.num_quantizers}")

    def _hf_encode(self, wave):
        out = self.model.encode(self._wave_tensor(wave), bandwidth=self.bandwidth_kbps, return_dict=True)
        return out.audio_codes[0, 0]  # [chunks=1, batch=1, n_q, T] → [n_q, T]

    def _hf_decode(self, codes):
        return self.model.decode(codes[None, None], [None], return_dict=True).audio_values

    def config_dict(self) -> dict[str, Any]:
        c = self.hf_config
        return {**self._base_config(), "bandwidth_kbps": self.bandwidth_kbps,
                "target_bandwidths": [float(b) for b in c.target_bandwidths],
                "upsampling_ratios": [int(r) for r in c.upsampling_ratios],
                "max_quantizers": int(c.num_quantizers), "hidden_size": int(c.hidden_size),
                "num_filters": int(c.num_filters), "use_causal_conv": bool(c.use_causal_conv)}


class DacCodec(_HFCodec):
    """Descript Audio Codec. `n_q` levels (default: all of config.n_codebooks)."""

    name = "dac"
    model_type = "dac"
    _model_cls = "DacModel"

    def __init__(self, path: Any = None, n_q: int | None = None, device: str = "cpu",
                 **unknown: Any) -> None:
        super().__init__(path=path, device=device, **unknown)
        c = self.hf_config
        total = int(c.n_codebooks)
        n_q = total if n_q is None else int(n_q)
        if not 1 <= n_q <= total:
            raise CodecError(f"dac: n_q={n_q} outside 1..{total} (config.n_codebooks)")
        self.n_q = n_q
        self.sample_rate_hz = int(c.sampling_rate)
        self.hop_samples = int(c.hop_length)
        self.codebook_size = int(c.codebook_size)

    def _hf_encode(self, wave):
        import torch

        pad = self.n_frames(wave.shape[0]) * self.hop_samples - wave.shape[0]
        x = torch.nn.functional.pad(self._wave_tensor(wave), (0, pad))  # as DacFeatureExtractor
        return self.model.encode(x, n_quantizers=self.n_q, return_dict=True).audio_codes[0]

    def _hf_decode(self, codes):
        return self.model.decode(audio_codes=codes[None], return_dict=True).audio_values

    def config_dict(self) -> dict[str, Any]:
        c = self.hf_config
        return {**self._base_config(), "max_quantizers": int(c.n_codebooks),
                "hop_length": int(c.hop_length),
                "downsampling_ratios": [int(r) for r in c.downsampling_ratios],
                "codebook_dim": int(c.codebook_dim), "encoder_hidden_size": int(c.encoder_hidden_size),
                "decoder_hidden_size": int(c.decoder_hidden_size)}


class MimiCodec(_HFCodec):
    """Kyutai Mimi (24 kHz, 12.5 Hz). `n_q` (alias `num_quantizers`) levels, default all."""

    name = "mimi"
    model_type = "mimi"
    _model_cls = "MimiModel"

    def __init__(self, path: Any = None, n_q: int | None = None, device: str = "cpu",
                 num_quantizers: int | None = None, **unknown: Any) -> None:
        super().__init__(path=path, device=device, **unknown)
        c = self.hf_config
        if n_q is not None and num_quantizers is not None and int(n_q) != int(num_quantizers):
            raise CodecError(f"mimi: n_q={n_q} and num_quantizers={num_quantizers} disagree")
        n_q = n_q if n_q is not None else num_quantizers  # num_quantizers: Mimi's own name
        total, sem = int(c.num_quantizers), int(c.num_semantic_quantizers)
        n_q = total if n_q is None else int(n_q)
        if not max(1, sem) <= n_q <= total:
            raise CodecError(f"mimi: n_q={n_q} outside {max(1, sem)}..{total} "
                             f"(the first {sem} are semantic and always encoded)")
        self.n_q = n_q
        self.sample_rate_hz = int(c.sampling_rate)
        self.hop_samples = int(c.frame_size)  # product of all encoder strides, downsample included
        self.codebook_size = int(c.codebook_size)
        if abs(self.sample_rate_hz / self.hop_samples - float(c.frame_rate)) > 1e-6:
            raise CodecError(f"mimi: config frame_rate {c.frame_rate} disagrees with sampling_rate "
                             f"{self.sample_rate_hz} / frame size {self.hop_samples}")

    def _hf_encode(self, wave):
        return self.model.encode(self._wave_tensor(wave), num_quantizers=self.n_q).audio_codes[0]

    def _hf_decode(self, codes):
        return self.model.decode(codes[None]).audio_values

    def config_dict(self) -> dict[str, Any]:
        c = self.hf_config
        return {**self._base_config(), "max_quantizers": int(c.num_quantizers),
                "num_semantic_quantizers": int(c.num_semantic_quantizers),
                "frame_rate": float(c.frame_rate), "frame_size": int(c.frame_size),
                "upsampling_ratios": [int(r) for r in c.upsampling_ratios],
                "hidden_size": int(c.hidden_size), "num_hidden_layers": int(c.num_hidden_layers),
                "codebook_dim": int(c.codebook_dim)}
