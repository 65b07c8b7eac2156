"""Audio front end: bytes → validated float32 PCM → mono → resampled segments on the 40 ms grid.

Pure code: takes bytes, returns arrays. No Beam, no file system walking. The pipeline calls
`prepare(data, uri, cfg)` and routes any `AudioError` to dead letters using its `reason`.

Decoders. "auto" (the default) is libsndfile (soundfile) for every format, whether or not the
optional pedalboard (GPL-3.0; `pip install 'tokenmill[fast-decode]'`) is installed, so a record's
key never depends on which packages a worker has. `--decoder pedalboard` asks for it explicitly
(WAV, FLAC, Ogg Vorbis, MP3; refused with the fix when it is not installed). Its measured lead
(bench/bench_frontend.py, prepare() on real music, one core, CPU time; x real time, soundfile /
pedalboard): WAV 3216 / 3620, FLAC 693 / 730, OGG Vorbis 489 / 519, MP3 1115 / 683: 1.05-1.2x
where it leads. The decoder used is recorded in `DecodedAudio.decoder`; a failure is never retried
with the other library. For lossless formats both give the same float32: pedalboard scales integer
PCM by 1/(2**(bits-1) - 1), so its output is re-quantised to libsndfile's 1/2**(bits-1), keeping
content hashes decoder-independent. Lossy decodes differ slightly between the two (Vorbis ~2e-7),
so for those an explicit --decoder is part of the key.

Truncation is never kept silently: tokenizers/containers.py checks each format's stream is complete.

pedalboard does not strip the MP3 encoder delay (LAME: 1105 samples of priming, plus padding);
libsndfile (mpg123, gapless) does. "auto" decodes MP3 with libsndfile.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from tokenmill.errors import TokenmillError, UsageError
from tokenmill.schemas import rates
from tokenmill.schemas.records import content_hash, make_key
from tokenmill.tokenizers import containers
from tokenmill.tokenizers.containers import sniff_format  # noqa: F401 (part of this module's API)

SOUNDFILE, PEDALBOARD = "soundfile", "pedalboard"
DECODERS = ("auto", SOUNDFILE, PEDALBOARD)
RESAMPLE_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")

# What "auto" decodes each format with: libsndfile always, installed packages or not (the module
# docstring says why). Formats not listed here (AIFF, CAF, ...) go to soundfile too.
AUTO_DECODER: dict[str, str] = {fmt: SOUNDFILE for fmt in ("WAV", "FLAC", "OGG/VORBIS", "OGG/OPUS", "MP3")}
PEDALBOARD_FORMATS = frozenset({"WAV", "FLAC", "OGG/VORBIS", "MP3"})  # pedalboard cannot open Ogg Opus from bytes
PEDALBOARD_MISSING = ("--decoder pedalboard needs the optional pedalboard package: pip install "
                      "'tokenmill[fast-decode]' (GPL-3.0), or use --decoder auto (soundfile)")


def pedalboard_available() -> bool:
    """Whether the optional pedalboard decoder can be imported here."""
    try:
        import pedalboard.io  # noqa: F401
    except ImportError:
        return False
    return True


class AudioError(TokenmillError):
    """Base of every front-end error. `reason` is a short stable tag for dead-letter records."""

    reason = "audio_error"

    def __init__(self, message: str, uri: str = ""):
        super().__init__(message)
        self.uri = uri

    def __reduce__(self):  # keep `uri` when pickled across worker processes
        return (type(self), (str(self), self.uri))


class UndecodableAudio(AudioError):
    """Not audio, an unknown container, or a truncated/corrupt stream."""
    reason = "undecodable"


class EmptyAudio(AudioError):
    """No bytes, no frames, or shorter than one 40 ms quantum / `min_duration_s`."""
    reason = "empty"


class NonFiniteAudio(AudioError):
    """NaN or Inf samples."""
    reason = "non_finite"


class UnsupportedAudio(AudioError):
    """Valid audio this configuration refuses (rate, channels) or a decoder cannot read."""
    reason = "unsupported"


class SilentAudio(AudioError):
    """Peak below `silence_dbfs`: silence would pollute the codebooks."""
    reason = "silent"


@dataclass(frozen=True)
class AudioConfig:
    """Front-end options, named like the pipeline flags that set them (see pipelines/options.py)."""

    target_rates_hz: tuple[int, ...] = (rates.SEMANTIC.sample_rate_hz, rates.ACOUSTIC.sample_rate_hz)
    max_segment_s: float = 300.0
    min_duration_s: float = 1.0
    min_source_rate_hz: int = 16000
    max_channels: int = 8
    silence_dbfs: float = -60.0
    decoder: str = "auto"
    resample_quality: str = "HQ"

    def __post_init__(self) -> None:
        rates_hz = tuple(self.target_rates_hz)
        _require(bool(rates_hz) and len(set(rates_hz)) == len(rates_hz),
                 f"target_rates_hz must be non-empty and unique, got {rates_hz}")
        for r in rates_hz:
            _require(isinstance(r, (int, np.integer)) and r > 0 and r % rates.QUANTA_PER_S == 0,
                     f"target rate {r!r} must be a positive int multiple of {rates.QUANTA_PER_S} Hz "
                     "(a whole number of samples per 40 ms quantum)")
        object.__setattr__(self, "target_rates_hz", tuple(int(r) for r in rates_hz))
        _require(self.max_segment_s >= float(rates.QUANTUM_S),
                 f"max_segment_s={self.max_segment_s} must be >= 0.04 s (one quantum)")
        _require(self.min_duration_s >= 0, f"min_duration_s={self.min_duration_s} must be >= 0")
        _require(isinstance(self.min_source_rate_hz, int) and self.min_source_rate_hz > 0,
                 f"min_source_rate_hz={self.min_source_rate_hz!r} must be a positive int")
        _require(isinstance(self.max_channels, int) and self.max_channels >= 1,
                 f"max_channels={self.max_channels!r} must be an int >= 1")
        _require(self.silence_dbfs <= 0, f"silence_dbfs={self.silence_dbfs} must be <= 0 (a peak in dBFS)")
        _require(self.decoder in DECODERS, f"decoder={self.decoder!r} must be one of {DECODERS}")
        if self.decoder == PEDALBOARD and not pedalboard_available():
            raise UsageError(PEDALBOARD_MISSING)
        _require(self.resample_quality in RESAMPLE_QUALITIES,
                 f"resample_quality={self.resample_quality!r} must be one of {RESAMPLE_QUALITIES}")


def _require(ok: bool, message: str) -> None:
    if not ok:  # also catches NaN, which fails every comparison
        raise ValueError(message)


@dataclass(frozen=True)
class DecodedAudio:
    """Decoder output. `pcm` is C-contiguous float32 [n, channels] (interleaved, as hashed by
    `content_hash`); integer PCM decodes to int/2**(bits-1) whichever decoder ran."""

    pcm: np.ndarray  # float32 [n, channels]
    sample_rate_hz: int
    channels: int
    format: str  # "WAV", "FLAC", "MP3", "OGG/VORBIS", "OGG/OPUS", or libsndfile's name
    decoder: str  # "soundfile" | "pedalboard"

    @property
    def n_frames(self) -> int:
        return int(self.pcm.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.sample_rate_hz


@dataclass(frozen=True)
class AudioSegment:
    """One segment of a track on the 40 ms grid, resampled to every target rate.

    `waves[rate]` is float32 [n_quanta * rate // 25]; segments of one track are views of one array.
    """

    uri: str
    source_hash: str  # content hash of the whole decoded track
    segment: int
    start_s: float  # a multiple of 0.04 s
    duration_s: float  # n_quanta * 0.04 s
    n_quanta: int
    source_sample_rate: int
    source_channels: int
    waves: dict[int, np.ndarray]  # rate_hz -> float32 [n_quanta * rate_hz // 25]
    format: str
    decoder: str

    @property
    def key(self) -> str:
        return make_key(self.source_hash, self.segment)


def _check_complete(data: bytes, uri: str, fmt: str, decoder: str, declared: int, decoded: int) -> None:
    """Raise UndecodableAudio if the stream is truncated (containers.truncation says why)."""
    problem = containers.truncation(data, fmt, decoder, declared, decoded, probe_tail=decoder == PEDALBOARD)
    if problem:
        raise UndecodableAudio(
            f"{uri}: truncated or corrupt {fmt} stream: {problem}; re-download or re-encode the file", uri)


# ---- decoding ---------------------------------------------------------------------------------

def _why(e: Exception) -> str:
    """A library's error text without object addresses, so dead-letter messages are reproducible."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the bytes", str(e)).strip()


def _decode_soundfile(data: bytes, uri: str, fmt: str | None) -> DecodedAudio:
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            declared, sr, ch = f.frames, f.samplerate, f.channels
            fmt = fmt or f.format
            pcm = f.read(dtype="float32", always_2d=True)  # [n, channels]
    except Exception as e:  # libsndfile/cffi errors: not decodable, whatever the cause
        what = f"this {fmt} stream (truncated or corrupt?)" if fmt else "it (not audio, or unknown container)"
        raise UndecodableAudio(f"{uri}: soundfile cannot decode {what}: {_why(e)}; re-download or re-encode "
                               "it as WAV/FLAC/OGG/Opus/MP3", uri) from e
    _check_complete(data, uri, fmt, SOUNDFILE, declared, len(pcm))
    return DecodedAudio(pcm, int(sr), int(ch), fmt, SOUNDFILE)


def _decode_pedalboard(data: bytes, uri: str, fmt: str) -> DecodedAudio:
    try:
        from pedalboard.io import AudioFile  # imported lazily: an optional extra, only this path needs it
    except ImportError as e:
        raise UnsupportedAudio(f"{uri}: {PEDALBOARD_MISSING}", uri) from e

    try:
        with AudioFile(io.BytesIO(data)) as f:
            declared, sr, ch, file_dtype = f.frames, f.samplerate, f.num_channels, f.file_dtype
            chans = f.read(declared) if declared else np.zeros((ch, 0), np.float32)  # [channels, n]
    except Exception as e:  # pedalboard raises ValueError/RuntimeError for bad streams
        raise UndecodableAudio(
            f"{uri}: pedalboard cannot decode this {fmt}: {_why(e)}; try --decoder soundfile", uri) from e
    if not float(sr).is_integer():
        raise UnsupportedAudio(f"{uri}: non-integer sample rate {sr} Hz; resample the file first", uri)
    _check_complete(data, uri, fmt, PEDALBOARD, declared, chans.shape[1])
    bits = {"int8": 8, "int16": 16, "int24": 24}.get(str(file_dtype))
    if bits:  # re-quantise v/(2**(b-1) - 1) to libsndfile's v/2**(b-1): identical float32 output
        work = chans.astype(np.float64) if bits > 16 else chans  # float32 can't hold 24-bit exactly
        np.multiply(work, 2.0 ** (bits - 1) - 1, out=work)
        np.rint(work, out=work)
        chans = np.multiply(work, 2.0 ** (1 - bits), out=work).astype(np.float32, copy=False)
    pcm = chans.T if ch == 1 else np.stack(list(chans), axis=1)  # C-order [n, ch]; 6x faster than .T.copy()
    return DecodedAudio(pcm, int(sr), int(ch), fmt, PEDALBOARD)


def decode(data: bytes, uri: str, decoder: str = "auto") -> DecodedAudio:
    """Decode a whole file from bytes to float32 [n, channels]; raises UndecodableAudio/EmptyAudio.

    decoder: "auto" (soundfile for every format, see AUTO_DECODER), "soundfile" or "pedalboard".
    An explicit decoder that cannot read the sniffed format raises UnsupportedAudio.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r} must be one of {DECODERS}")
    if not data:
        raise EmptyAudio(f"{uri}: file is empty (0 bytes); remove it from the input list", uri)
    fmt = sniff_format(data)
    choice = AUTO_DECODER.get(fmt or "", SOUNDFILE) if decoder == "auto" else decoder  # auto: soundfile
    if choice == PEDALBOARD:
        if fmt is None:
            raise UndecodableAudio(
                f"{uri}: not a WAV/FLAC/OGG Vorbis/MP3 stream pedalboard can read; "
                "try --decoder soundfile for other containers", uri)
        if fmt not in PEDALBOARD_FORMATS:
            raise UnsupportedAudio(
                f"{uri}: pedalboard cannot decode {fmt} from bytes; use --decoder soundfile (or auto)", uri)
        out = _decode_pedalboard(data, uri, fmt)
    else:
        out = _decode_soundfile(data, uri, fmt)
    if out.n_frames == 0:
        raise EmptyAudio(f"{uri}: {out.format} stream has 0 frames; remove it from the input list", uri)
    return out


# ---- signal ops -------------------------------------------------------------------------------

def to_mono(pcm: np.ndarray) -> np.ndarray:
    """Mean over channels: float32 [n, channels] (or [n]) → float32 [n]. Downmix before resampling."""
    pcm = np.asarray(pcm)
    if pcm.ndim == 1:
        return pcm.astype(np.float32, copy=False)
    if pcm.ndim != 2 or pcm.shape[1] == 0:
        raise ValueError(f"pcm must be [n] or [n, channels>=1], got shape {pcm.shape}")
    mono = pcm[:, 0].astype(np.float32, copy=True)  # column adds: far faster than mean(axis=1)
    for c in range(1, pcm.shape[1]):
        mono += pcm[:, c]
    if pcm.shape[1] > 1:
        mono *= np.float32(1.0 / pcm.shape[1])
    return mono


def resample(mono: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """soxr resampling of float32 [n] → float32 [≈ n * sr_out / sr_in]."""
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if sr_in == sr_out:
        return mono
    return soxr.resample(mono, sr_in, sr_out, quality)


def _exact_length(wave: np.ndarray, n: int, uri: str, sr_in: int, sr_out: int) -> np.ndarray:
    """Trim to n samples, or zero-pad a resampler rounding shortfall of at most a few samples."""
    short = n - len(wave)
    if short <= 0:
        return wave[:n]
    if short > math.ceil(sr_out / sr_in) + 2:
        raise UndecodableAudio(f"{uri}: resampler returned {len(wave)} samples, needed {n} at {sr_out} "
                               "Hz (internal error; please report it with the file)", uri)
    return np.concatenate([wave, np.zeros(short, np.float32)])


def check_signal(dec: DecodedAudio, uri: str, cfg: AudioConfig) -> None:
    """Raise the typed error for audio this config refuses: rate, channels, length, NaN/Inf, silence."""
    if dec.sample_rate_hz < cfg.min_source_rate_hz:
        raise UnsupportedAudio(
            f"{uri}: sample rate {dec.sample_rate_hz} Hz is below min_source_rate_hz="
            f"{cfg.min_source_rate_hz}; pass --min_source_rate_hz {dec.sample_rate_hz} to accept "
            "band-limited audio", uri)
    if dec.channels > cfg.max_channels:
        raise UnsupportedAudio(
            f"{uri}: {dec.channels} channels exceed max_channels={cfg.max_channels}; pass --max_channels "
            f"{dec.channels} to downmix them, or drop the file", uri)
    min_s = max(cfg.min_duration_s, float(rates.QUANTUM_S))
    if dec.duration_s < min_s or rates.n_quanta(dec.n_frames, dec.sample_rate_hz) == 0:
        raise EmptyAudio(f"{uri}: {dec.duration_s:.3f} s is shorter than {min_s:g} s; drop the file or "
                         "lower --min_duration_s", uri)
    lo, hi = float(dec.pcm.min()), float(dec.pcm.max())  # NaN/Inf propagate into min/max
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteAudio(f"{uri}: decoded samples contain NaN or Inf; repair or re-export the file", uri)
    _check_peak(max(-lo, hi), uri, cfg, "")


def _check_peak(peak: float, uri: str, cfg: AudioConfig, what: str) -> None:
    if peak < 10.0 ** (cfg.silence_dbfs / 20.0):
        level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.1f}"
        raise SilentAudio(f"{uri}: {what}peak {level} dBFS is below silence_dbfs={cfg.silence_dbfs:g}; "
                          "drop the file or lower --silence_dbfs", uri)


# ---- the front end ----------------------------------------------------------------------------

def prepare(data: bytes, uri: str, cfg: AudioConfig = AudioConfig()) -> list[AudioSegment]:
    """bytes → validated, hashed, mono, 40 ms-aligned segments at every target rate.

    Each segment's waves[rate] holds exactly n_quanta * rate // 25 samples. The track is resampled
    once per rate and sliced on quantum boundaries (exact sample indices at every target rate).
    Raises an AudioError subclass for anything the pipeline should dead-letter.
    """
    dec = decode(data, uri, cfg.decoder)
    check_signal(dec, uri, cfg)
    source_hash = content_hash(dec.pcm, dec.sample_rate_hz)  # of the decoder output
    mono = to_mono(dec.pcm)  # float32 [n]
    if dec.channels > 1:
        mono_peak = max(-float(mono.min()), float(mono.max()))
        _check_peak(mono_peak, uri, cfg, "channels cancel in the mono downmix: ")
    total_q = rates.n_quanta(len(mono), dec.sample_rate_hz)
    waves = {}  # rate -> float32 [total_q * rate // 25]
    for rate in cfg.target_rates_hz:  # the whole track (not the cut): real context at the end
        full = resample(mono, dec.sample_rate_hz, rate, cfg.resample_quality)
        waves[rate] = _exact_length(full, total_q * rate // rates.QUANTA_PER_S, uri, dec.sample_rate_hz, rate)
    segments, qps = [], rates.QUANTA_PER_S
    for index, (q0, q1) in enumerate(rates.segment_bounds(total_q, cfg.max_segment_s)):
        segments.append(AudioSegment(
            uri=uri, source_hash=source_hash, segment=index,
            start_s=rates.seconds_of_quanta(q0), duration_s=rates.seconds_of_quanta(q1 - q0),
            n_quanta=q1 - q0,
            source_sample_rate=dec.sample_rate_hz, source_channels=dec.channels,
            waves={r: w[q0 * r // qps:q1 * r // qps] for r, w in waves.items()},  # exact: r % 25 == 0
            format=dec.format, decoder=dec.decoder,
        ))
    return segments
