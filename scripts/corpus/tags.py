"""Captions of recorded tracks, built only from metadata: file tags, album files, package facts.

Nothing is guessed from the audio. A caption reads

    "<title>" by <artist> (<artist note>), <genre>, from the album "<album>" (<year>); <stem>.
    <role sentence naming the game>

where each part is left out when the metadata lacks it (the year stands alone when there is no
usable album).
"""
from __future__ import annotations

import json
import os
import re

from scripts.corpus.packages import BY_NAME

TAG_KEYS = ("title", "artist", "composer", "album", "date", "genre", "license")
ID3_FRAMES = {"title": "TIT2", "artist": "TPE1", "album": "TALB", "genre": "TCON"}
# values that say nothing about the music
UNINFORMATIVE_GENRES = {"game", "sound fx", "(none)", "other", "none", "soundtrack", "game soundtrack", "music",
                        "unknown"}
UNINFORMATIVE_ALBUMS = {"non", "none", "unknown", ""}
FRETS_ON_FIRE_STEMS = {
    "song.ogg": "backing track (Frets on Fire song.ogg: the mix without the playable guitar part)",
    "guitar.ogg": "isolated guitar track (Frets on Fire guitar.ogg)",
    "rhythm.ogg": "rhythm guitar/bass track (Frets on Fire rhythm.ogg)",
}
SUPERTUX_WORLDS = ("antarctic", "castle", "forest", "retro", "tropical")


def read_tags(path: str) -> dict[str, str]:
    """The file's own tags (Vorbis comments, ID3 frames) by TAG_KEYS; {} when it has none or cannot be read."""
    try:
        import mutagen
        m = mutagen.File(path)
    except Exception:
        return {}
    if m is None or m.tags is None:
        return {}
    out = {}
    for key in TAG_KEYS:
        try:
            value = m.tags.get(key) if hasattr(m.tags, "get") else None
        except Exception:
            value = None
        if value is None and hasattr(m.tags, "getall"):
            frame = ID3_FRAMES.get(key)
            value = [str(f) for f in m.tags.getall(frame)] if frame else None
        if value:
            text = str(value[0] if isinstance(value, list) else value).strip()
            if text:
                out[key] = text
    return out


def parse_song_ini(text: str) -> dict[str, str]:
    """title and artist from a Frets on Fire song.ini (`name = ...`, `artist = ...`)."""
    meta = {}
    for line in text.split("\n"):
        key, _, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "name":
            meta["title"] = value
        if key == "artist":
            meta["artist"] = re.sub(r"^Composed and performed by ", "", value).split(" - ")[0]
    return meta


def album_json_meta(album: dict, filename: str) -> dict:
    """title, artist, album, date of one track from a Warzone 2100 album.json."""
    meta = {}
    for track in album.get("tracks", []):
        if track.get("filename") == filename:
            meta.update(title=track.get("title"), artist=track.get("author"))
    meta["album"] = "Warzone 2100 " + album.get("title", "")
    meta["date"] = album.get("date")
    return meta


def package_metadata(package: str, path: str) -> dict[str, str]:
    """Metadata from the files a package ships beside its music (album.json, song.ini)."""
    meta: dict = {}
    folder = os.path.dirname(path)
    if package == "warzone2100-music":
        album = os.path.join(folder, "album.json")
        if os.path.exists(album):
            with open(album) as f:
                meta.update(album_json_meta(json.load(f), os.path.basename(path)))
    if package.startswith("fretsonfire-songs"):
        ini = os.path.join(folder, "song.ini")
        if os.path.exists(ini):
            with open(ini, errors="replace") as f:
                meta.update(parse_song_ini(f.read()))
        meta["stem"] = FRETS_ON_FIRE_STEMS.get(os.path.basename(path))
    return {k: v for k, v in meta.items() if v}


def title_from_filename(path: str) -> str:
    """'music/01_-_Ezer_Ev.ogg' -> 'Ezer Ev'; 'track2.ogg' -> 'Track 2' (for files without a title tag)."""
    s = os.path.splitext(os.path.basename(path))[0]
    s = re.sub(r"^\d+[_ -]+(-[_ ])?", "", s)
    s = s.replace("_", " ").replace("-", " ").strip()
    s = re.sub(r"(?<=[A-Za-z])(?=\d)", " ", s)
    return s[:1].upper() + s[1:] if s else s


def _usable_album(album: str | None, title: str) -> bool:
    return bool(album) and album.strip().lower() not in UNINFORMATIVE_ALBUMS \
        and album.lower() != title.lower() and not re.search(r"https?:|www\.", album)


def track_caption(package: str, tags: dict[str, str], relpath: str) -> str:
    """The caption of a recorded track of `package` at `relpath` (inside the package) with `tags`."""
    spec = BY_NAME[package]
    title = tags.get("title") or title_from_filename(relpath)
    title = re.sub(r"\s*\(fof (rhythm|guitar)\)$", "", title)
    artist = tags.get("artist") or tags.get("composer") or spec.artist
    s = f'"{title}"'
    if artist:
        s += f" by {artist}"
        if spec.artist_note:
            s += f" ({spec.artist_note})"
    genre = tags.get("genre") or spec.genre
    if genre and genre.lower() not in UNINFORMATIVE_GENRES:
        s += f", {genre}"
    album = tags.get("album")
    year = str(tags.get("date") or "")[:4]
    if _usable_album(album, title):
        s += f', from the album "{album}"' + (f" ({year})" if year.isdigit() else "")
    elif year.isdigit() and year != "1900":
        s += f", {year}"
    if tags.get("stem"):
        s += f"; {tags['stem']}"
    world = os.path.basename(os.path.dirname(relpath))
    if package == "supertux-data" and world in SUPERTUX_WORLDS:
        s += f"; level music for the {world} worlds"
    return s + ". " + spec.role.format(game=spec.game)
