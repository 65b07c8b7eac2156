"""The music21 scores we render: categories, General MIDI instruments, render-job planning, captions.

A render job is a dict (it crosses a process boundary): corpus_path, number (of a piece inside an
opus), cat, seed, sf2, sf_name, format, out; optional ensemble, program, qpm, title, desc, composer,
clip_start / clip_dur (seconds) and max_s. The worker (score_job.render_one) draws the ensemble,
solo program and tempo from random.Random(seed) when the job leaves them open, so a job's output is
a function of the job alone.
"""
from __future__ import annotations

import collections
import os
import random
import re
from dataclasses import dataclass

import numpy as np

GM_NAMES = {0: "acoustic grand piano", 4: "electric piano", 6: "harpsichord", 8: "celesta", 11: "vibraphone",
            12: "marimba", 13: "xylophone", 15: "dulcimer", 19: "church organ", 21: "accordion", 22: "harmonica",
            24: "nylon-string acoustic guitar", 40: "violin", 41: "viola", 42: "cello", 46: "orchestral harp",
            48: "string ensemble", 52: "choir aahs", 56: "trumpet", 57: "trombone", 58: "tuba", 60: "french horn",
            64: "soprano sax", 65: "alto sax", 66: "tenor sax", 67: "baritone sax", 68: "oboe", 69: "english horn",
            70: "bassoon", 71: "clarinet", 72: "piccolo", 73: "flute", 74: "recorder", 75: "pan flute",
            78: "whistle", 105: "banjo", 109: "bagpipe", 110: "fiddle"}
# ensemble -> GM programs from the highest part down (one program: every part plays it)
ENSEMBLES = {
    "string quartet": [40, 40, 41, 42], "woodwind quartet": [73, 68, 71, 70],
    "brass quartet": [56, 56, 60, 58], "saxophone quartet": [64, 65, 66, 67],
    "pipe organ": [19], "choir": [52], "string ensemble": [48], "piano": [0], "harpsichord": [6],
    "recorder consort": [74], "electric piano": [4], "vibraphone": [11], "marimba": [12],
    "orchestral harp": [46], "nylon-string guitar": [24],
}
SOLO_PROGRAMS = [40, 110, 73, 74, 75, 78, 21, 22, 68, 71, 24, 105, 109, 46, 0, 13, 15, 56, 64, 69]
# ensembles the caption names as "played on <ensemble>"
SINGLE_INSTRUMENTS = {"piano", "harpsichord", "pipe organ", "electric piano", "vibraphone", "marimba",
                      "orchestral harp", "nylon-string guitar"}
MAX_RENDER_S = 360.0


@dataclass(frozen=True)
class Category:
    """A folder of music21's corpus. ensembles: a list to draw from, 'solo', or None (by part count)."""
    desc: str
    era: str
    composer: str | None
    ensembles: list | str | None
    share: float              # of the render hours (all shares sum to 1.015, as built)
    qpm_range: tuple[int, int]  # tempo drawn when the score has none


_C = Category
CATEGORIES: dict[str, Category] = {
    "bach": _C("four-part chorale harmonization", "Baroque", "Johann Sebastian Bach",
               ["string quartet", "woodwind quartet", "brass quartet", "pipe organ", "choir", "saxophone quartet",
                "piano"], .22, (66, 92)),
    "palestrina": _C("polyphonic mass movement", "Renaissance", "Giovanni Pierluigi da Palestrina",
                     ["choir", "recorder consort", "string ensemble", "pipe organ", "brass quartet",
                      "string quartet"], .18, (60, 84)),
    "trecento": _C("fourteenth-century Italian polyphonic piece", "late Medieval (Trecento)", None,
                   ["recorder consort", "choir", "string quartet", "orchestral harp"], .05, (60, 90)),
    "josquin": _C("polyphonic motet/chanson", "Renaissance", "Josquin des Prez",
                  ["choir", "recorder consort", "string ensemble"], .02, (60, 84)),
    "essenFolksong": _C("European folk song melody from the Essen folksong collection", "traditional folk", None,
                        "solo", .10, (84, 132)),
    "oneills1850": _C("Irish traditional tune from O'Neill's Music of Ireland (1903 collection of 1,850 melodies)",
                      "Irish traditional", None, "solo", .14, (90, 140)),
    "ryansMammoth": _C("fiddle tune from Ryan's Mammoth Collection (1883)",
                       "American/Irish/Scottish traditional dance music", None, "solo", .10, (100, 140)),
    "airdsAirs": _C("air from Aird's Selection of Scotch, English, Irish and Foreign Airs (1780s)",
                    "Scottish/British traditional", None, "solo", .05, (80, 120)),
    "mozart": _C("piece", "Classical", "Wolfgang Amadeus Mozart", None, .03, (96, 132)),
    "haydn": _C("string quartet movement", "Classical", "Joseph Haydn", None, .03, (96, 132)),
    "beethoven": _C("piece", "Classical", "Ludwig van Beethoven", None, .03, (96, 132)),
    "schumann_robert": _C("piece", "Romantic", "Robert Schumann", None, .02, (80, 120)),
    "schumann_clara": _C("piece", "Romantic", "Clara Schumann", None, .01, (80, 120)),
    "chopin": _C("mazurka", "Romantic", "Frédéric Chopin", ["piano"], .005, (120, 150)),
    "joplin": _C("ragtime piano piece", "ragtime", "Scott Joplin", ["piano", "marimba", "electric piano"], .005,
                 (90, 110)),
    "handel": _C("piece", "Baroque", "George Frideric Handel", None, .005, (80, 110)),
    "corelli": _C("trio sonata movement", "Baroque", "Arcangelo Corelli", ["string quartet", "harpsichord"], .005,
                  (80, 110)),
    "cpebach": _C("piece", "Baroque/Classical", "Carl Philipp Emanuel Bach", None, .005, (80, 110)),
    "schubert": _C("song", "Romantic", "Franz Schubert", None, .005, (70, 100)),
    "verdi": _C("piece", "Romantic", "Giuseppe Verdi", None, .005, (70, 100)),
}


def programs_for(ensemble: str, n_parts: int) -> list[int]:
    """One GM program per part, highest part first, spread over the ensemble's instruments."""
    progs = ENSEMBLES[ensemble]
    if len(progs) == 1:
        return progs * n_parts
    if n_parts == 1:
        return [progs[0]]
    return [progs[round(i * (len(progs) - 1) / (n_parts - 1))] for i in range(n_parts)]


def choose_ensemble(category: Category, n_parts: int, rnd: random.Random) -> str:
    if category.ensembles == "solo" or (category.ensembles is None and n_parts == 1):
        return "solo"
    if category.ensembles is None:
        return "string quartet" if n_parts == 4 else rnd.choice(["piano", "string ensemble", "harpsichord"])
    return rnd.choice(category.ensembles)


def work_title(corpus_path: str, cat: str) -> str:
    """A title from the corpus file name, for scores whose metadata has none ('bach/bwv66.6' -> 'BWV 66.6')."""
    stem = re.sub(r"\.(mxl|xml|musicxml|krn|abc|mid)$", "", corpus_path.split("/", 1)[1])
    if cat == "bach":
        return "BWV " + stem.split("/")[-1][3:]
    t = stem.replace("/", ", ")
    t = re.sub(r"opus(\d+)no(\d+)", r"Op. \1 No. \2", t)
    t = re.sub(r"opus(\d+)", r"Op. \1", t)
    t = re.sub(r"\bk(\d+)", r"K. \1", t)
    t = re.sub(r"movement(\d+)", r"movement \1", t)
    t = t.replace("_", " ")
    return t[:1].upper() + t[1:]


def _instrumentation(ensemble: str, programs: list[int]) -> str:
    if ensemble == "solo":
        return f", played as a solo {GM_NAMES[programs[0]]} melody"
    if ensemble in SINGLE_INSTRUMENTS:
        return f", played on {ensemble}"
    if ensemble == "choir":
        return ", voiced with the General MIDI 'choir aahs' sound"
    if len(set(programs)) == 1:
        return f", played by a {ensemble} ({len(programs)} {GM_NAMES[programs[0]]} parts)"
    if ensemble.endswith("quartet") and len(programs) != 4:
        names = [GM_NAMES[p] for p in programs]
        return f", played by {', '.join(names[:-1])} and {names[-1]}"
    return f", played by a {ensemble} ({', '.join(GM_NAMES[p] for p in programs)})"


def score_caption(d: dict) -> str:
    """Caption of a render from its facts: title, desc, composer, era, ensemble, programs, tempo_text,
    qpm, meter, key, soundfont."""
    s = f'"{d["title"]}", ' if d.get("title") else ""
    s += d["desc"] if s else d["desc"][:1].upper() + d["desc"][1:]
    if d.get("composer"):
        s += f" by {d['composer']}"
    s += f" ({d['era']})"
    s += _instrumentation(d["ensemble"], d["programs"])
    if d.get("tempo_text"):
        s += f", marked '{d['tempo_text']}'"
    s += f", {d['qpm']:.0f} quarter notes per minute"
    if d.get("meter"):
        s += f", {d['meter']} time"
    if d.get("key"):
        s += f", in {d['key']}"
    return s + f". Synthesized from the score with FluidSynth ({d['soundfont']} General MIDI SoundFont)."


def score_pool() -> dict[str, list[tuple[str, object, float]]]:
    """Every renderable (corpus path, number, length in quarter notes) of music21's core corpus by category."""
    from music21 import corpus

    bundle = corpus.corpora.CoreCorpus().metadataBundle
    pool = collections.defaultdict(list)
    # the entries dict directly: iterating the bundle object is about 1000x slower
    for e in getattr(bundle, "_metadataEntries", {}).values() or bundle:
        sp = str(e.sourcePath)
        cat = sp.split("/")[0]
        if cat not in CATEGORIES or e.metadata is None or sp.endswith(".rntxt"):
            continue
        try:
            ql = float(e.metadata.scoreQuarterLength or 0)
        except Exception:
            ql = 0
        pool[cat].append((sp, e.number if e.number not in (None, "") else None, ql))
    for items in pool.values():
        items.sort(key=lambda t: (t[0], str(t[1])))
    return pool


def render_filename(index: int, corpus_path: str, number) -> str:
    """'00012_bwv66_6.flac': the job index, then the corpus path's stem (and piece number)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", os.path.splitext(corpus_path.split("/", 1)[1])[0])
    return f"{index:05d}_" + stem + (f"_{number}" if number else "") + ".flac"


def plan_renders(pool: dict, hours: float, sf2: str, sf_name: str, outdir: str, seed: int) -> list[dict]:
    """Render jobs filling each category's share of `hours` (estimated from score length at the middle
    of its tempo range, capped at MAX_RENDER_S; pieces under 12 s are skipped; a category may run 10 %
    over its budget). Pieces are taken in an order shuffled by random.Random(seed)."""
    rnd = random.Random(seed)
    jobs = []
    for cat, category in CATEGORIES.items():
        items = list(pool.get(cat, []))
        rnd.shuffle(items)
        budget = hours * 3600 * category.share
        total = 0.0
        for corpus_path, number, ql in items:
            if total >= budget:
                break
            est = min((ql or 60) * 60.0 / np.mean(category.qpm_range), MAX_RENDER_S)
            if est < 12 or total + est > budget * 1.1:
                continue
            i = len(jobs)
            num = int(number) if number and str(number).isdigit() else number
            jobs.append(dict(corpus_path=corpus_path, number=num, cat=cat, seed=seed * 100003 + i, sf2=sf2,
                             sf_name=sf_name, max_s=MAX_RENDER_S, format="FLAC",
                             out=os.path.join(outdir, cat, render_filename(i, corpus_path, number))))
            total += est
    return jobs
