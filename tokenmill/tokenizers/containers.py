"""Audio containers from their bytes: which format a file is (magic bytes), and whether its stream
is complete. Pure byte parsing plus one libsndfile probe; no decoding policy (tokenizers/audio.py).

Truncation is never kept silently. pedalboard zero-fills truncated FLAC, WAV and MP3 up to the
declared length, and libsndfile shortens truncated WAV and Ogg without error, so each format gets
an explicit check: WAV compares the RIFF data chunk size with the bytes present; Ogg requires a
complete last page flagged end-of-stream; FLAC and MP3 decoded by pedalboard get a libsndfile probe
of the last frames (libFLAC loses sync, mpg123 comes up short). libsndfile's own MP3 frame count
comes from the Xing/LAME header and is compared with the decoded count.
"""
from __future__ import annotations

import io

import soundfile

_PROBE_FRAMES = 8192  # tail frames libsndfile decodes to verify a pedalboard FLAC/MP3 decode

# ---- sniffing and integrity checks --------------------------------------------------

def _mpeg_sync(data: bytes, pos: int) -> bool:
    """An MPEG audio frame header at `pos`: 11-bit sync, a layer, a valid bitrate and rate."""
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return False
    return data[pos + 1] & 0x06 != 0 and data[pos + 2] >> 4 != 0xF and (data[pos + 2] >> 2) & 3 != 3


def sniff_format(data: bytes) -> str | None:
    """Container/codec from magic bytes: "WAV", "FLAC", "OGG/VORBIS", "OGG/OPUS", "MP3" or None."""
    pos = 0
    while data[pos:pos + 3] == b"ID3" and len(data) >= pos + 10:  # ID3v2 tags (MP3, some FLAC)
        size = int.from_bytes(bytes(b & 0x7F for b in data[pos + 6:pos + 10]), "big")  # synchsafe
        pos += 10 + size + (10 if data[pos + 5] & 0x10 else 0)
    head = data[pos:pos + 12]
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE" and pos == 0:
        return "WAV"
    if head[:4] == b"OggS" and pos == 0:
        first_page = data[:28 + 255 + 64]
        if b"OpusHead" in first_page:
            return "OGG/OPUS"
        if b"\x01vorbis" in first_page:
            return "OGG/VORBIS"
        return None
    return "MP3" if _mpeg_sync(data, pos) else None


def _wav_shortfall(data: bytes) -> str | None:
    """Why a RIFF/WAVE file is cut short (its 'data' chunk declares more bytes than present), or None."""
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"data":
            if size in (0, 0xFFFFFFFF) or pos + 8 + size <= len(data):  # 0 / ~0: streamed, unknown
                return None
            return f"the data chunk declares {size} bytes but only {len(data) - pos - 8} are present"
        pos += 8 + size + (size & 1)
    return "the file ends before its data chunk"


def _ogg_complete(data: bytes) -> bool:
    """True if a complete Ogg page flagged end-of-stream ends exactly at the end of the data."""
    end = len(data)
    i = data.rfind(b"OggS", max(0, end - 65_307))  # 65,307 bytes: the largest possible page
    while i >= 0:
        body_start = i + 27 + (data[i + 26] if i + 27 <= end else end)
        if body_start <= end and data[i + 4] == 0 and body_start + sum(data[i + 27:body_start]) == end:
            return bool(data[i + 5] & 0x04)
        i = data.rfind(b"OggS", max(0, end - 65_307), i)
    return False


def _tail_decodes(data: bytes) -> bool:
    """libsndfile decodes the last frames completely (libFLAC loses sync, mpg123 comes up short)."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            n = min(f.frames, _PROBE_FRAMES)
            f.seek(f.frames - n)
            return len(f.read(n, dtype="float32")) == n
    except Exception:  # any libsndfile failure on the tail means the stream is not intact
        return False


def _id3_end(data: bytes) -> int:
    pos = 0
    while data[pos:pos + 3] == b"ID3" and len(data) >= pos + 10:
        size = int.from_bytes(bytes(b & 0x7F for b in data[pos + 6:pos + 10]), "big")
        pos += 10 + size + (10 if data[pos + 5] & 0x10 else 0)
    return pos


def _mp3_declared_bytes(data: bytes) -> int | None:
    """Stream length in bytes from the first frame's Xing/Info header, when it carries one."""
    start = _id3_end(data)
    head = data[start:start + 200]
    for tag in (b"Xing", b"Info"):
        i = head.find(tag)
        if i >= 0 and i + 16 <= len(head):
            flags = int.from_bytes(head[i + 4:i + 8], "big")
            if flags & 0x2:  # bytes field present (after the frames field when that is present)
                off = i + 8 + (4 if flags & 0x1 else 0)
                return int.from_bytes(head[off:off + 4], "big")
    return None


_MP3_KBPS = {  # (MPEG-1?) -> Layer III bitrate table, index 1..14
    True: (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_frame_len(h: bytes) -> int | None:
    """Byte length of the Layer III frame whose 4-byte header is `h`, or None if not a header."""
    if h[0] != 0xFF or (h[1] & 0xE0) != 0xE0:
        return None
    version, layer = (h[1] >> 3) & 3, (h[1] >> 1) & 3
    br_i, sr_i, pad = h[2] >> 4, (h[2] >> 2) & 3, (h[2] >> 1) & 1
    if version == 1 or layer != 1 or br_i in (0, 15) or sr_i == 3:
        return None
    mpeg1 = version == 3
    kbps, sr = _MP3_KBPS[mpeg1][br_i - 1], _MP3_RATES[version][sr_i]
    return (144 if mpeg1 else 72) * kbps * 1000 // sr + pad


def _mp3_ends_mid_frame(data: bytes) -> bool:
    """Walk the MPEG frame chain; True if the last frame runs past the end of the data.

    CBR files without a Xing header carry no length, so a cut exactly on a frame boundary is
    undetectable (and harmless: what remains is valid audio). Damaged bytes are skipped by resync.
    """
    end = len(data) - (128 if data[-128:-125] == b"TAG" else 0)
    pos = _id3_end(data)
    while pos + 4 <= end:
        n = _mp3_frame_len(data[pos:pos + 4])
        if n is None:
            pos += 1
            continue
        if pos + n > end:
            return True
        pos += n
    return False


# Ogg granule positions and MP3 frame counts include codec priming/padding that decoders trim, and
# mpg123 skips damaged frames mid-stream ("decode to the end" with warnings): a small shortfall of
# decoded vs declared frames is not truncation. Real case: 3 Debian MP3s decode 0.1 % short, an
# Opus file 10 samples short. Completeness is judged by the container instead (see below).
_LOSSY_SHORTFALL = 0.01


def truncation(data: bytes, fmt: str, decoder: str, declared: int, decoded: int, *, probe_tail: bool) -> str | None:
    """Why the stream is truncated or corrupt (see the module docstring for why per format), or
    None. `probe_tail`: the decoder zero-fills a cut FLAC/MP3 (pedalboard), so decode the tail with
    libsndfile as well."""
    problem = None
    short = declared - decoded
    lossy = fmt == "MP3" or fmt.startswith("OGG/")
    if short > 0 and (not lossy or short > _LOSSY_SHORTFALL * declared):
        problem = f"{decoder} decoded {decoded} of {declared} declared frames"
    elif fmt == "MP3" and (n := _mp3_declared_bytes(data)) and len(data) - _id3_end(data) < n:
        problem = f"its Xing header declares {n} bytes but only {len(data) - _id3_end(data)} are present"
    elif fmt == "MP3" and _mp3_ends_mid_frame(data):
        problem = "its last MPEG frame is cut off"
    elif fmt == "WAV":
        problem = _wav_shortfall(data)
    elif fmt.startswith("OGG/") and not _ogg_complete(data):
        problem = "the last Ogg page is incomplete or not flagged end-of-stream"
    elif probe_tail and fmt in ("FLAC", "MP3") and not _tail_decodes(data):
        problem = "its last frames do not decode (pedalboard would zero-fill them)"
    return problem
