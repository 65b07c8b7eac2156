"""Caption files: MusicCaps CSV or JSONL, parsed into one lookup that the tokenize job joins on.

Accepted formats (chosen by extension, `.csv` or `.jsonl`/`.json`):
- MusicCaps CSV with columns ytid, start_s, end_s, caption, aspect_list. A file matches a row when
  its file stem is the ytid, `<ytid>_<start_s>`, or `<ytid>_<start_s>-<end_s>` (the names the
  common MusicCaps download scripts produce). aspect_list becomes `tags`.
- JSONL, one object per line, with `caption` and optional `tags` (list of strings or a dict whose
  values are joined as "name: value"), and one of: `key` (a record key or a source hash), `uri`
  (matched exactly) or `file` (a relative path, matched as a suffix of the uri on whole path
  components; the longest matching path wins, so `wesnoth/music/battle.ogg` and
  `supertux/music/battle.ogg` do not collide).

Lookup order for a record: record key, source hash, exact uri, file path suffix, file stem.
"""
from __future__ import annotations

import ast
import csv
import io
import json
from dataclasses import dataclass, field

from tokenmill.errors import TokenmillError


class CaptionFileError(TokenmillError, ValueError):
    """A captions file cannot be parsed; the message names the line and the fix."""


@dataclass(frozen=True)
class Caption:
    caption: str | None
    tags: tuple[str, ...] | None


@dataclass
class CaptionIndex:
    by_key: dict[str, Caption] = field(default_factory=dict)
    by_uri: dict[str, Caption] = field(default_factory=dict)
    by_name: dict[str, list[tuple[tuple[str, ...], Caption]]] = field(default_factory=dict)
    by_stem: dict[str, Caption] = field(default_factory=dict)

    def __len__(self) -> int:
        return (len(self.by_key) + len(self.by_uri) + sum(len(v) for v in self.by_name.values())
                + len(self.by_stem))

    def add_file(self, relpath: str, cap: Caption) -> None:
        parts = tuple(p for p in relpath.replace("\\", "/").split("/") if p not in ("", "."))
        if not parts:
            raise ValueError("empty 'file' path")
        self.by_name.setdefault(parts[-1], []).append((parts, cap))

    def lookup(self, *, key: str, uri: str) -> Caption | None:
        uri_parts = tuple(uri.replace("\\", "/").split("/"))
        name = uri_parts[-1]
        for table, k in ((self.by_key, key), (self.by_key, key.split("-", 1)[0]), (self.by_uri, uri)):
            if k in table:
                return table[k]
        best = None
        for parts, cap in self.by_name.get(name, ()):
            if uri_parts[-len(parts):] == parts and (best is None or len(parts) > len(best[0])):
                best = (parts, cap)
        if best is not None:
            return best[1]
        return self.by_stem.get(name.rsplit(".", 1)[0])


def _tags(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return tuple(f"{k}: {v}" for k, v in sorted(value.items()) if v not in (None, ""))
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    raise TypeError(f"tags must be a list or an object, got {type(value).__name__}")


def parse_musiccaps_csv(text: str, source: str = "captions.csv") -> CaptionIndex:
    reader = csv.DictReader(io.StringIO(text))
    need = {"ytid", "start_s", "end_s", "caption", "aspect_list"}
    missing = need - set(reader.fieldnames or [])
    if missing:
        raise CaptionFileError(f"{source}: not a MusicCaps CSV, missing columns {sorted(missing)}")
    index = CaptionIndex()
    for line_no, row in enumerate(reader, 2):
        try:
            aspects = ast.literal_eval(row["aspect_list"]) if row["aspect_list"] else None
            start, end = int(float(row["start_s"])), int(float(row["end_s"]))
            cap = Caption(row["caption"] or None, _tags(aspects))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise CaptionFileError(f"{source}:{line_no}: bad start_s/end_s/aspect_list: {e}") from e
        ytid = row["ytid"]
        for stem in (ytid, f"{ytid}_{start}", f"{ytid}_{start}-{end}"):
            index.by_stem[stem] = cap
    return index


def parse_jsonl(text: str, source: str = "captions.jsonl") -> CaptionIndex:
    index = CaptionIndex()
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            cap = Caption(obj.get("caption"), _tags(obj.get("tags")))
        except (json.JSONDecodeError, TypeError, AttributeError, RecursionError) as e:
            raise CaptionFileError(f"{source}:{line_no}: {e}; each line must be a JSON object") from e
        if not isinstance(cap.caption, (str, type(None))):
            raise CaptionFileError(f"{source}:{line_no}: 'caption' must be a string or null, got "
                                   f"{type(cap.caption).__name__}")
        for field_name in ("key", "uri"):
            if field_name in obj and not isinstance(obj[field_name], str):
                raise CaptionFileError(f"{source}:{line_no}: '{field_name}' must be a string, got "
                                       f"{type(obj[field_name]).__name__}")
        if "key" in obj:
            index.by_key[obj["key"]] = cap
        elif "uri" in obj:
            index.by_uri[obj["uri"]] = cap
        elif "file" in obj:
            try:
                index.add_file(obj["file"], cap)
            except (ValueError, AttributeError) as e:
                raise CaptionFileError(f"{source}:{line_no}: bad 'file': {e}") from e
        else:
            raise CaptionFileError(f"{source}:{line_no}: needs one of 'key', 'uri' or 'file'")
    return index


def parse_captions(data: bytes, source: str) -> CaptionIndex:
    """Parse a captions file's bytes; the format comes from `source`'s extension."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CaptionFileError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason}); save the "
                               "captions file as UTF-8") from e
    if source.endswith(".csv"):
        return parse_musiccaps_csv(text, source)
    if source.endswith((".jsonl", ".json")):
        return parse_jsonl(text, source)
    raise CaptionFileError(f"{source}: unknown captions format; use a MusicCaps .csv or a .jsonl file")
