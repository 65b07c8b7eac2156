"""Turn a stored record back into audio, for listening: `beam_runner.py decode`.

The codec named in the manifest is rebuilt with the manifest's config, and its weights hash must
match the one the dataset was tokenized with (a different checkpoint would decode other sounds).
"""
from __future__ import annotations

import io
import json
import os

import numpy as np

from tokenmill.errors import TokenmillError
from tokenmill.schemas import shards as fmt
from tokenmill.schemas.records import MANIFEST_NAME, TrackRecord


class DatasetError(TokenmillError, ValueError):
    """The dataset directory, a key or a stream is missing; the message says which."""


def load_manifest(root: str) -> dict:
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.exists(path):
        raise DatasetError(f"{path} not found; is {root} a tokenmill dataset (tokenize --output)?")
    with open(path) as f:
        return json.load(f)


def find_record(root: str, key: str, manifest: dict | None = None) -> TrackRecord:
    """Scan the shards for `key` (Parquet first: it can skip row groups by key statistics)."""
    manifest = manifest or load_manifest(root)
    shards = sorted(manifest["shards"], key=lambda s: s["format"] != "parquet")
    for s in shards:
        path = os.path.join(root, s["path"])
        if s["format"] == "parquet":
            table = fmt.read_parquet_table(path, filters=[("key", "=", key)])
            if table.num_rows:
                return TrackRecord.from_row(table.to_pylist()[0])
        else:
            with open(path, "rb") as f:
                for rec in fmt.decode_wds(io.BytesIO(f.read())):
                    if rec.key == key:
                        return rec
    raise DatasetError(f"key {key} is in no shard of {root}; list keys with "
                       f"python -c \"import pyarrow.parquet as pq; print(pq.read_table('{root}/parquet', "
                       "columns=['key']))\"")


def decode_record(root: str, key: str, levels: int | None = None,
                  model_path: str | None = None) -> tuple[np.ndarray, int, TrackRecord]:
    """→ (float32 wave [n], sample_rate_hz, record) decoded from the record's acoustic codes.

    The codec is rebuilt from the job's own arguments (manifest job.acoustic); `model_path`
    replaces the weights path when the dataset moved to a machine where it differs."""
    from tokenmill.tokenizers.codec import CodecError, rebuild_codec

    manifest = load_manifest(root)
    if manifest["tokenizers"].get("acoustic") is None:
        raise DatasetError(f"{root} has no acoustic stream; tokenize with --acoustic_codec to decode audio")
    rec = find_record(root, key, manifest)
    try:
        codec = rebuild_codec(manifest["job"].get("acoustic"), manifest["tokenizers"]["acoustic"], model_path,
                              where=root)
    except CodecError as e:
        raise DatasetError(str(e)) from None
    codes = rec.acoustic if levels is None else rec.acoustic[:levels]
    return codec.decode(codes), codec.sample_rate_hz, rec


def first_key(root: str) -> str:
    """The smallest key in the dataset (a convenient default for `decode`)."""
    manifest = load_manifest(root)
    keys = []
    for s in manifest["shards"]:
        if s["format"] == "parquet" and s["records"]:
            import pyarrow.parquet as pq

            keys += fmt.read_parquet_table(os.path.join(root, s["path"]), columns=["key"])["key"].to_pylist()
    if not keys:
        raise DatasetError(f"{root} has no Parquet records to pick a key from; pass --key")
    return min(keys)
