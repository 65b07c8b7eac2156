"""MusicCaps-format caption tables: rows (ytid, start_s, end_s, caption, aspect_list, ...) and the
default zero-shot label vocabulary (the most frequent aspects). Pure: text in, rows out."""
from __future__ import annotations

import ast
import csv
import io
from collections import Counter
from dataclasses import dataclass

from tokenmill.eval import EvalError

REQUIRED = ("ytid", "start_s", "end_s", "caption", "aspect_list")


@dataclass(frozen=True)
class CaptionRow:
    ytid: str
    start_s: float
    end_s: float
    caption: str | None
    aspects: tuple[str, ...]


def parse_rows(text: str, source: str) -> list[CaptionRow]:
    """Parse a MusicCaps-format CSV; raises EvalError naming the line on a bad row or a duplicate ytid."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise EvalError(f"{source}: not a MusicCaps-format CSV, missing column(s) {', '.join(missing)} "
                        f"(needs {', '.join(REQUIRED)})")
    rows, seen = [], {}
    for line, r in enumerate(reader, 2):
        try:
            aspects = ast.literal_eval(r["aspect_list"]) if (r["aspect_list"] or "").strip() else []
            if not isinstance(aspects, (list, tuple)) or not all(isinstance(a, str) for a in aspects):
                raise ValueError("aspect_list must be a list of strings like ['piano', 'calm']")
            start, end = float(r["start_s"]), float(r["end_s"])
            if not 0 <= start < end:
                raise ValueError(f"needs 0 <= start_s < end_s, got {start} and {end}")
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise EvalError(f"{source}:{line}: bad row ({e}); fix or remove it") from e
        ytid = (r["ytid"] or "").strip()
        if not ytid:
            raise EvalError(f"{source}:{line}: empty ytid; every row needs the clip's id")
        if ytid in seen:
            raise EvalError(f"{source}:{line}: ytid {ytid!r} already on line {seen[ytid]}; clips pair by ytid, "
                            "so each must appear once")
        seen[ytid] = line
        rows.append(CaptionRow(ytid, start, end, (r["caption"] or "").strip() or None,
                               tuple(a.strip() for a in aspects if a.strip())))
    return rows


def aspect_vocabulary(rows: list[CaptionRow], n: int) -> list[str]:
    """The `n` most frequent aspects (ties broken by name), case kept as written."""
    counts = Counter(a for r in rows for a in set(r.aspects))
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
