"""What tokenmill reads is data, never code: weights from safetensors or weights-only torch.load,
shards without pickle, tar members with plain names, shard bytes checked against the manifest, and
malformed inputs (captions, codebooks, shards) stopped with an error that names the file."""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

import beam_runner
from helpers import write_dataset
from tokenmill.pipelines.options import DEFAULT_SEMANTIC_EXTRACTOR
from tokenmill.schemas import shards as fmt
from tokenmill.schemas.captions import CaptionFileError, parse_captions
from tokenmill.schemas.records import parquet_shard_name

ROOT = Path(__file__).resolve().parent.parent
KEY = "00000000000000aa-0000"
_MARKS: list[str] = []


# ---- (a) weights and arrays load without pickle ------------------------------------------------

UNSAFE = [
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"weights_only\s*=\s*False"), "weights_only=False"),
    (re.compile(r"\b(c?pickle|dill|cloudpickle|joblib)\.loads?\("), "a pickle loader"),
    (re.compile(r"\bread_pickle\("), "pandas read_pickle"),
    (re.compile(r"\bUnpickler\("), "an Unpickler"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
]


def _call_args(text: str, start: int) -> str:
    """The argument text of the call whose '(' is at `start` (balanced parentheses)."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1]
    return text[start:]


def unsafe_loads(text: str) -> list[str]:
    found = [f"line {text.count(chr(10), 0, m.start()) + 1}: {what}"
             for rx, what in UNSAFE for m in rx.finditer(text)]
    for m in re.finditer(r"\btorch\.load\s*(\()", text):
        if not re.search(r"weights_only\s*=\s*True", _call_args(text, m.start(1))):
            found.append(f"line {text.count(chr(10), 0, m.start()) + 1}: torch.load without weights_only=True")
    return found


def test_the_scanner_catches_unsafe_loads():
    assert unsafe_loads("torch.load(p, weights_only=True)\nnp.load(f)\n") == []
    assert unsafe_loads("x = torch.load(\n    p,\n    weights_only=True,\n)") == []
    bad = "a = torch.load(p)\nb = np.load(f, allow_pickle=True)\nc = pickle.loads(d)\nd = joblib.load(p)"
    assert [s.split(":")[0] for s in unsafe_loads(bad)] == ["line 2", "line 3", "line 4", "line 1"]


def test_source_tree_loads_weights_only_from_safe_formats():
    """Every weight / array load in tokenmill/ (and the CLI) is safetensors, torch.load(...,
    weights_only=True) or numpy without pickle: grep-enforced, so a new load cannot regress."""
    files = sorted((ROOT / "tokenmill").rglob("*.py")) + [ROOT / "beam_runner.py"]
    problems = [f"{p.relative_to(ROOT)} {s}" for p in files for s in unsafe_loads(p.read_text())]
    assert not problems, "unsafe deserialization:\n" + "\n".join(problems)


# ---- (b, c) WebDataset shards: no pickle, plain member names ---------------------------------

def _mark():
    _MARKS.append("unpickled")  # would run if a reader ever unpickled the crafted member
    return 0


class _Evil:
    def __reduce__(self):
        return (_mark, ())


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _json() -> tuple[tarfile.TarInfo, bytes]:
    return _file(f"{KEY}.json", b'{"key": "%s"}' % KEY.encode())


@pytest.mark.parametrize("suffix", ["pyd", "pickle", "semantic.pkl"])
def test_pickle_members_are_refused_before_reading(suffix):
    import pickle

    data = _tar([_json(), _file(f"{KEY}.{suffix}", pickle.dumps(_Evil()))])
    with pytest.raises(fmt.ShardFormatError, match=rf"{KEY}\.{suffix}'? is a pickle"):
        fmt.decode_wds(io.BytesIO(data))
    with pytest.raises(fmt.ShardFormatError, match="is a pickle"):
        list(fmt.iter_wds_samples(io.BytesIO(data)))  # the key/uri reader of `--into` too
    assert _MARKS == []


def test_object_dtype_npy_is_refused_without_unpickling():
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([_Evil()], dtype=object), allow_pickle=True)
    data = _tar([_json(), _file(f"{KEY}.semantic.npy", buf.getvalue())])
    with pytest.raises(fmt.ShardFormatError, match=rf"{KEY}\.semantic\.npy cannot be loaded without pickle"):
        fmt.decode_wds(io.BytesIO(data))
    assert _MARKS == []


@pytest.mark.parametrize("member, message", [
    (_file("/etc/passwd", b"x"), "absolute or parent-relative"),
    (_file(f"../{KEY}.json", b"{}"), "absolute or parent-relative"),
    (_file(f"a/../../{KEY}.json", b"{}"), "absolute or parent-relative"),
    (_file(f"..\\{KEY}.json", b"{}"), "absolute or parent-relative"),
    (_special(f"{KEY}.semantic.npy", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
    (_special(f"{KEY}.semantic.npy", tarfile.LNKTYPE, f"{KEY}.json"), "is a hard link"),
    (_special(f"{KEY}.semantic.npy", tarfile.CHRTYPE), "is a device"),
    (_special(f"{KEY}.semantic.npy", tarfile.BLKTYPE), "is a device"),
    (_special(f"{KEY}.semantic.npy", tarfile.FIFOTYPE), "is a fifo"),
    (_special("somedir", tarfile.DIRTYPE), "is a directory"),
], ids=["absolute", "dotdot", "nested-dotdot", "backslash-dotdot", "symlink", "hardlink", "chardev",
        "blockdev", "fifo", "directory"])
def test_tar_members_must_be_plain_regular_files(member, message):
    data = _tar([_json(), member])
    with pytest.raises(fmt.ShardFormatError, match=message):
        fmt.decode_wds(io.BytesIO(data))


def test_a_crafted_shard_in_a_dataset_is_refused_naming_the_file(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    shard = sorted((ds / "wds").glob("train-*"))[0]
    shard.write_bytes(_tar([_json(), _special(f"{KEY}.semantic.npy", tarfile.SYMTYPE, "/etc/passwd")]))
    with pytest.raises(fmt.ShardFormatError, match=rf"{re.escape(str(shard))}: member .* is a symlink"):
        list(fmt.read_dataset(str(ds), format="webdataset", verify_checksums=False))


# ---- (d) shard checksums against the manifest before decoding ---------------------------------

def test_read_dataset_checks_sha256_before_decoding(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    assert len(list(fmt.read_dataset(str(ds)))) == 3  # default verify_checksums=True: all match
    shard = ds / parquet_shard_name("train", 0, 1)
    listed = hashlib.sha256(shard.read_bytes()).hexdigest()
    recs = fmt.decode_parquet(str(shard))
    forged = fmt.encode_parquet(recs[:-1])  # a *valid* shard with one record fewer
    shard.write_bytes(forged)
    with pytest.raises(fmt.ChecksumError) as e:
        list(fmt.read_dataset(str(ds)))
    msg = str(e.value)
    assert str(shard) in msg and listed in msg and hashlib.sha256(forged).hexdigest() in msg
    assert "verify" in msg  # the fix
    # opting out reads the forged shard silently: the reason the check is on by default
    assert len(list(fmt.read_dataset(str(ds), verify_checksums=False))) == 2


def test_read_dataset_checks_every_format(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    shard = sorted((ds / "wds").glob("valid-*"))[0]
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(fmt.ChecksumError, match=re.escape(str(shard))):
        list(fmt.read_dataset(str(ds), format="webdataset"))
    assert len(list(fmt.read_dataset(str(ds), format="parquet"))) == 3


# ---- (e) malformed inputs give clear errors ------------------------------------------------

@pytest.mark.parametrize("fmt_name", ["parquet", "webdataset"])
def test_truncated_shard_names_the_file(tmp_path, fmt_name):
    ds = write_dataset(tmp_path / "ds")
    shard = next(p for p in sorted(ds.rglob("train-*")) if (fmt_name == "parquet") == (p.suffix == ".parquet"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(fmt.ChecksumError, match=re.escape(str(shard))):
        list(fmt.read_dataset(str(ds), format=fmt_name))
    with pytest.raises(fmt.ShardFormatError, match=rf"{re.escape(str(shard))}: not a readable"):
        list(fmt.read_dataset(str(ds), format=fmt_name, verify_checksums=False))


def test_bad_npy_and_json_members_name_the_member():
    data = _tar([_file(f"{KEY}.json", b"{not json"), _file(f"{KEY}.semantic.npy", b"\x93NUMPY\x01\x00")])
    with pytest.raises(fmt.ShardFormatError, match=rf"{KEY}\.json is not valid JSON"):
        fmt.decode_wds(io.BytesIO(data))
    data = _tar([_json(), _file(f"{KEY}.semantic.npy", b"\x93NUMPY\x01\x00garbage")])
    with pytest.raises(fmt.ShardFormatError, match=rf"{KEY}\.semantic\.npy"):
        fmt.decode_wds(io.BytesIO(data))


@pytest.mark.parametrize("name, data, message", [
    ("c.jsonl", b'{"file": "a.wav", "caption": "ok"}\n\xff\xfe bad bytes\n', r"c\.jsonl: not UTF-8"),
    ("c.jsonl", b'{"file": "a.wav", "caption": 5}\n', r"c\.jsonl:1: 'caption' must be a string"),
    ("c.jsonl", b'{"file": "a.wav"}\n[1, 2]\n', r"c\.jsonl:2: .*each line must be a JSON object"),
    ("c.jsonl", b'{"uri": ["x"], "caption": "c"}\n', r"c\.jsonl:1: 'uri' must be a string"),
    ("c.jsonl", b'{"key": "k", "tags": 7}\n', r"c\.jsonl:1: tags must be a list"),
    ("c.csv", b"ytid,start_s,end_s,caption,aspect_list\nabc,0,10,hi,7\n", r"c\.csv:2: bad .*aspect_list"),
    ("c.csv", b"ytid,start_s,end_s,caption,aspect_list\nabc,0,10,hi,__import__('os')\n", r"c\.csv:2"),
])
def test_malformed_captions_name_the_file_and_line(name, data, message):
    with pytest.raises(CaptionFileError, match=message):
        parse_captions(data, name)


def _random_codebook(out: Path, dim: int) -> Path:
    from tokenmill.tokenizers.kmeans import fit_kmeans

    x = np.random.default_rng(0).standard_normal((400, dim)).astype(np.float32)
    cb = fit_kmeans(x[:300], 4, seed=0, x_heldout=x[300:], sources={"n_tracks": 1, "uris_sha256": "ab"})
    cb.save(out)
    return out


def test_malformed_captions_stop_tokenize_before_the_job(tmp_path, real_audio_dir):
    from tokenmill.tokenizers.semantic import build_extractor

    cb = _random_codebook(tmp_path / "cb", build_extractor(DEFAULT_SEMANTIC_EXTRACTOR).describe()["dim"])
    bad = tmp_path / "caps.jsonl"
    bad.write_bytes(b'{"file": "a.wav", "caption": "fine"}\nnot json\n')
    with pytest.raises(SystemExit, match=rf"--captions: {re.escape(str(bad))}:2"):
        beam_runner.main(["tokenize", "--input", str(real_audio_dir / "*.wav"), "--codebook", str(cb),
                          "--captions", str(bad), "--output", str(tmp_path / "o"), "--acoustic_codec", "none",
                          "--mulan_model", "none"])


def test_wrong_dimension_codebook_stops_tokenize(tmp_path, real_audio_dir):
    _random_codebook(tmp_path / "cb", 5)
    with pytest.raises(SystemExit, match=r"has dim 5 but extractor 'melodic' gives"):
        beam_runner.main(["tokenize", "--input", str(real_audio_dir / "*.wav"), "--codebook",
                          str(tmp_path / "cb"), "--output", str(tmp_path / "o"), "--acoustic_codec", "none",
                          "--mulan_model", "none"])
    assert not (tmp_path / "o").exists()  # refused before any job (or journal) starts
