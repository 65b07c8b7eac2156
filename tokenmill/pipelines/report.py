"""Human-readable summaries printed at the end of a job (read back from what the job wrote)."""
from __future__ import annotations

import json
import math

from apache_beam.io.filesystems import FileSystems


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_summary(root: str, manifest: dict, *, verified: bool, elapsed_s: float | None = None) -> None:
    c = manifest["counts"]
    hours = c["seconds"] / 3600
    streams = manifest.get("streams", {})
    token_lines = []
    for name, info in sorted(streams.items()):
        rate = info.get("frame_rate_hz")
        if rate:
            token_lines.append(f"{name} {round(c['seconds'] * rate):,} ({rate:g}/s, vocab {info.get('vocab_size')})")
        elif name == "mulan":
            token_lines.append(f"mulan {c['records'] * info['n_stages']:,} ({info['n_stages']}/record, vocab "
                               f"{info['vocab_size']}; {info['model']} windows {info['dim']}-d, 1/s)")
        elif name == "melody":  # one token row per stored window; the manifest keeps no window count
            token_lines.append(f"melody {info['n_stages']}/window (vocab {info['vocab_size']}; {info['model']} "
                               f"windows {info['dim']}-d, {info['window_s']} s at a {info['stride_s']} s stride)")
    by_format: dict[str, list] = {}
    for s in manifest["shards"]:
        by_format.setdefault(s["format"], []).append(s)
    root = root.rstrip("/")
    print()
    print("tokenmill " + ("verify: OK" if verified else "tokenize: done"))
    print(f"  inputs        {c['inputs']} files")
    print(f"  tracks        {c['sources_in_records']} ({c['records']} records/segments, "
          f"{hours:.3f} h = {c['seconds'] / 60:.1f} min)")
    print(f"  tokens        {'; '.join(token_lines) or '-'}")
    first = manifest["shards"][0]["format"] if manifest["shards"] else None
    captioned = sum(s.get("captioned", 0) for s in manifest["shards"] if s["format"] == first)
    splits = {sp: sum(s["records"] for s in manifest["shards"] if s["format"] == first and s["split"] == sp)
              for sp in ("train", "valid")}
    print(f"  captions      {captioned}/{c['records']} records; splits: train {splits['train']}, "
          f"valid {splits['valid']}")
    reasons = ", ".join(f"{k} {v}" for k, v in c.get("dead_by_reason", {}).items())
    print(f"  dead letters  {c['dead_letters']} ({c['sources_dead_only']} files with no record)"
          + (f": {reasons}" if reasons else ""))
    for fmt, shards in sorted(by_format.items()):
        total = sum(s["bytes"] for s in shards)
        print(f"  {fmt:<13} {len(shards)} shards, {_fmt_bytes(total)} in {root}/{shards[0]['path'].split('/')[0]}/")
    for d in manifest["dead_letter_files"]:
        print(f"  failures      {root}/{d['path']}")
    print(f"  manifest      {root}/manifest.json")
    if elapsed_s:
        print(f"  wall time     {elapsed_s:.1f} s ({c['seconds'] / elapsed_s:.0f}x real time)")


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else str(x)


def print_fit_summary(output: str, elapsed_s: float, kind: str = "semantic") -> None:
    out = output.rstrip("/")
    cards = [m.path for m in FileSystems.match([f"{out}/{kind}-*.json"])[0].metadata_list]
    if not cards:
        print(f"no {kind} codebook card found in {out}")
        return
    # A directory can hold several fits (refits keep their parents): show every card.
    for path in sorted(cards):
        with FileSystems.open(path) as f:
            card = json.loads(f.read())
        print()
        print(f"tokenmill fit-codebook: {card.get('id')}")
        print(f"  codebook      {path[:-len('.json')]}.safetensors")
        if kind in ("mulan", "melody"):
            model = (card.get("sources") or {}).get(kind) or {}
            mse = card.get("heldout_mse_per_stage") or card.get("train_mse_per_stage") or []
            on = "held-out" if card.get("heldout_mse_per_stage") else "train"
            print(f"  model         {model.get('name')} ({str(model.get('weights_sha256'))[:12]}…, "
                  f"{model.get('sample_rate_hz')} Hz)")
            print(f"  stages x k    {card.get('n_stages')} x {card.get('k')}, dim {card.get('dim')}")
            print(f"  fit sample    {card.get('n_train_vectors')} windows (+{card.get('n_heldout_vectors')} held out)")
            if mse:
                at = " / ".join(f"{_num(mse[i - 1])} @{i}" for i in sorted({1, 4, len(mse)}) if i <= len(mse))
                print(f"  {on + ' MSE':<13} {at} stages")
            continue
        print(f"  k x dim       {card.get('k')} x {card.get('dim')}")
        print(f"  fit sample    {card.get('n_train_vectors')} frames (+{card.get('n_heldout_vectors')} held out)")
        print(f"  held-out MSE  {_num(card.get('heldout_mse'))} (train {_num(card.get('train_mse'))})")
        print(f"  usage         {_num(card.get('usage_entropy_bits'))} bits entropy of "
              f"{math.log2(card['k']):.0f} possible, dead codes {card.get('dead_codes')}")
    print(f"  wall time     {elapsed_s:.1f} s")
