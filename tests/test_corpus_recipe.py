"""The pure parts of the corpus recipe (scripts/corpus): captions, scan rules, manifest records,
the package table, render planning and audio shaping. No apt, network or FluidSynth needed; the
expected captions are those of the published `small` corpus."""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from scripts.corpus import build, debian, packages, records, score_catalog, score_job, small, tags
from scripts.corpus.errors import CorpusError
from scripts.corpus.scan import Deduper, Track, large_destination, walk_sorted, wanted_by_rules
from tokenmill.errors import TokenmillError

FOF = "usr/share/games/fretsonfire/data/songs/muldjord/armygeddon/"


# --- captions of recordings -------------------------------------------------------------------

def test_caption_song_pack_stem_with_artist_note_and_bare_year():
    t = {"title": "Armygeddon", "artist": "Muldjord", "album": "non", "date": "2006", "genre": "Death Metal",
         "stem": "isolated guitar track (Frets on Fire guitar.ogg)"}
    assert tags.track_caption("fretsonfire-songs-muldjord", t, FOF + "guitar.ogg") == (
        '"Armygeddon" by Muldjord (El Senator of the Danish metal band Muldjord), Death Metal, 2006; '
        "isolated guitar track (Frets on Fire guitar.ogg). Song from a song pack for Frets on Fire, a guitar "
        "rhythm game.")


def test_caption_falls_back_to_file_name_and_package_artist():
    assert tags.track_caption("pushover-data", {"album": "pushover !"}, "usr/share/pushover/themes/greek.ogg") == (
        '"Greek" by Roberto Lorenz, from the album "pushover !". Soundtrack music from Pushover, a domino '
        "puzzle game.")
    assert tags.track_caption("drascula-music", {}, "usr/share/scummvm/drascula/audio/track2.ogg") == (
        '"Track 2". Soundtrack music from Drascula: The Vampire Strikes Back, a point-and-click adventure game '
        "(Alcachofa Soft, 1996).")


def test_caption_album_with_year_and_custom_role():
    t = {"title": "Ezer Év", "artist": "Obsidian Shell", "album": "Elysia", "date": "2008",
         "genre": "Female Fronted Metal"}
    assert tags.track_caption("marsshooter-data", t, "usr/share/games/marsshooter/audio/music/01_-_Ezer_Ev.ogg") == (
        '"Ezer Év" by Obsidian Shell, Female Fronted Metal, from the album "Elysia" (2008). Album track used as '
        "music in M.A.R.S., a 2D space shooter.")


def test_caption_drops_uninformative_values():
    rel = "usr/share/games/supertux2/music/forest/forest_theme.ogg"
    t = {"genre": "Game", "album": "http://example.org/album", "date": "1900", "composer": "A. Composer"}
    assert tags.track_caption("supertux-data", t, rel) == (
        '"Forest theme" by A. Composer; level music for the forest worlds. Soundtrack music from SuperTux, '
        "a 2D jump-and-run platform game.")
    # an album equal to the title says nothing; the year then stands alone
    t = {"title": "Menu (fof rhythm)", "album": "menu", "date": "2011-01-02"}
    assert tags.track_caption("colobot-common-sounds", t, "x/menu.ogg") == (
        '"Menu", 2011. Soundtrack music from Colobot: Gold Edition, an educational programming strategy game.')


def test_title_from_filename():
    assert tags.title_from_filename("a/01_-_Ezer_Ev.ogg") == "Ezer Ev"
    assert tags.title_from_filename("track2.ogg") == "Track 2"
    assert tags.title_from_filename("b/03 battle-theme.mp3") == "Battle theme"


def test_package_metadata_files(tmp_path):
    assert tags.parse_song_ini("[song]\nname = Armygeddon\nartist = Composed and performed by Muldjord - 2006\n"
                               "delay = 0\n") == {"title": "Armygeddon", "artist": "Muldjord"}
    album = {"title": "Aftermath", "date": "2019", "tracks": [{"filename": "a.opus", "title": "Dawn",
                                                                "author": "X"}]}
    assert tags.album_json_meta(album, "a.opus") == {"title": "Dawn", "artist": "X", "album": "Warzone 2100 Aftermath",
                                                     "date": "2019"}
    song = tmp_path / "armygeddon"
    song.mkdir()
    (song / "song.ini").write_text("name = Armygeddon\nartist = Muldjord\n")
    assert tags.package_metadata("fretsonfire-songs-muldjord", str(song / "rhythm.ogg")) == {
        "title": "Armygeddon", "artist": "Muldjord",
        "stem": "rhythm guitar/bass track (Frets on Fire rhythm.ogg)"}
    assert tags.package_metadata("asc-music", str(song / "rhythm.ogg")) == {}


# --- scan and dedupe rules --------------------------------------------------------------------

@pytest.mark.parametrize("package, rel, wanted", [
    ("wesnoth-1.16-music", "usr/share/games/wesnoth/1.16/data/core/music/silence.ogg", False),
    ("wesnoth-1.16-music", "usr/share/games/wesnoth/1.16/data/core/music/knolls.ogg", True),
    ("wesnoth-1.16-music", "usr/share/games/wesnoth/1.16/data/core/music/README.txt", False),
    ("starfighter-data", "usr/share/starfighter/music/through_space.ogg", False),
    ("planetblupi-music-ogg", "usr/share/planetblupi/music/music002.ogg", False),
    ("planetblupi-music-ogg", "usr/share/planetblupi/music/music004.ogg", True),
    ("megaglest-data", "usr/share/games/megaglest/data/core/music/intro.OGG", True),
    ("megaglest-data", "usr/share/games/megaglest/data/sound/click.wav", False),
    ("warzone2100-music", "usr/share/games/warzone2100/music/menu.opus", False),
    ("warzone2100-music", "usr/share/games/warzone2100/music/albums/aftermath_soundtrack/menu_enhanced.opus", True),
])
def test_scan_rules(package, rel, wanted):
    assert wanted_by_rules(package, rel) is wanted


def test_walk_order_and_dedupe(tmp_path):
    for p in ("b/2.ogg", "b/1.ogg", "a/z.ogg", "c.ogg"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"x")
    got = [str(p.relative_to(tmp_path)) for p in map(__import__("pathlib").Path, walk_sorted(str(tmp_path)))]
    assert got == ["c.ogg", "a/z.ogg", "b/1.ogg", "b/2.ogg"]  # a folder's files, then its sub-folders
    d = Deduper()
    assert [d.first(h, r) for h, r in [("h1", "a"), ("h2", "b"), ("h1", "c")]] == [True, True, False]
    assert d.seen == {"h1": "a", "h2": "b"}
    assert large_destination("wesnoth-1.16-music", "usr/share/games/wesnoth/1.16/data/core/music/x.ogg") == \
        "audio/wesnoth-1.16-music/wesnoth/1.16/data/core/music/x.ogg"
    assert large_destination("ufoai-music", "zip/music/a.ogg") == "audio/ufoai-music/zip/music/a.ogg"


# --- package table ----------------------------------------------------------------------------

def test_package_table():
    names = [p.name for p in packages.PACKAGES]
    assert len(names) == len(set(names)) == 26
    assert len(packages.packages_for("large")) == 16 and packages.packages_for("xl") == names
    assert set(small.small_packages()) <= set(packages.packages_for("large"))
    for p in packages.PACKAGES:
        assert p.version and p.game and p.license
        assert bool(p.include) != bool(p.archive), p.name   # one way to find the music
        assert "{game}" in p.role
        for rx in p.skip + ((p.only,) if p.only else ()):
            re.compile(rx)
    assert packages.BY_NAME["nexuiz-music"].members() == [
        "./usr/share/doc/nexuiz-music/copyright", "./usr/share/games/nexuiz/data/music.pk3"]
    assert debian.members_of("fluid-soundfont-gm") == [
        "./usr/share/doc/fluid-soundfont-gm/copyright", "./usr/share/sounds/sf2/FluidR3_GM.sf2"]
    assert debian.download_specs("asc-music") == ["asc-music=1.3-6", "asc-music"]
    assert debian.download_specs("timgm6mb-soundfont") == ["timgm6mb-soundfont"]
    with pytest.raises(CorpusError, match="packages.py"):
        debian.members_of("no-such-package")
    with pytest.raises(ValueError):
        packages.packages_for("small")


# --- manifest records and summary -------------------------------------------------------------

def _track():
    return Track("/cache/x/g.ogg", "usr/share/pushover/themes/greek.ogg", "pushover-data", "0.0.5+git20180909-4",
                 44100, 2, 95.5, "OGG", "VORBIS", {"album": "pushover !"}, "caption")


def test_recording_and_render_records(tmp_path):
    facts = dict(file="flac/pushover_greek.flac", duration_s=20.0, sample_rate=44100, channels=2,
                 format="FLAC/PCM_16", bytes=1507696)
    rec = records.recording_record(facts, _track(), "GPL-3+", offset_s=10)
    assert json.dumps(rec) == json.dumps({
        "file": "flac/pushover_greek.flac", "kind": "recording", "caption": "caption", "duration_s": 20.0,
        "sample_rate": 44100, "channels": 2, "format": "FLAC/PCM_16", "bytes": 1507696,
        "source": {"debian_package": "pushover-data", "version": "0.0.5+git20180909-4",
                   "path": "usr/share/pushover/themes/greek.ogg", "offset_s": 10, "license": "GPL-3+"},
        "tags": {"album": "pushover !"}})  # key order included: manifests compare byte for byte
    big = records.recording_record(facts, _track(), "GPL-3+", sha1="ab")
    assert list(big) == ["file", "kind", "caption", "duration_s", "sample_rate", "channels", "format", "bytes",
                         "sha1", "source", "tags"] and "offset_s" not in big["source"]
    result = {"caption": "c", "corpus_path": "bach/bwv66.6", "number": None, "meta": {"qpm": 80.0}}
    r = records.render_record(dict(facts, file="wav/s.wav"), result, records.small_render_license("FluidR3_GM"))
    assert r["kind"] == "score_render" and r["source"] == {
        "music21_corpus": "bach/bwv66.6", "number": None,
        "license": "music21 corpus (BSD-3-Clause package; public-domain scores); SoundFont FluidR3_GM"}
    records.write_jsonl(str(tmp_path / "m.jsonl"), [rec, r])
    lines = (tmp_path / "m.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == [rec, r]


def test_summary():
    recs = [dict(file="a", duration_s=1800.0, bytes=2_000_000, format="OGG/VORBIS", sample_rate=44100,
                 source={"debian_package": "asc-music"}),
            dict(file="b", duration_s=900.0, bytes=500_000, format="FLAC/PCM_16", sample_rate=24000,
                 source={"music21_corpus": "bach/bwv1.6"}),
            dict(file="c", duration_s=90.0, bytes=150_000, format="OGG/VORBIS", sample_rate=48000,
                 source={"debian_package": "asc-music"})]
    assert records.summarize(recs) == {
        "files": 3, "hours": 0.775, "minutes": 46.5, "mbytes": 2.65,
        "formats": {"OGG/VORBIS": 2, "FLAC/PCM_16": 1}, "sample_rates": {44100: 1, 24000: 1, 48000: 1},
        "by_source": {"asc-music": {"files": 2, "hours": 0.525, "mbytes": 2.1},
                      "music21:bach": {"files": 1, "hours": 0.25, "mbytes": 0.5}}}


# --- small corpus layout -----------------------------------------------------------------------

def test_small_file_names_and_render_jobs():
    assert [c.filename() for c in small.CLIPS] == [
        "ogg/wesnoth_breaking_the_chains.ogg", "flac/wesnoth_traveling_minstrels.flac",
        "flac/singularity_awakening.flac", "opus/singularity_through_space.opus",
        "ogg/fretsonfire_armygeddon_song.ogg", "flac/fretsonfire_armygeddon_guitar.flac",
        "ogg/marsshooter_01_ezer_ev.ogg", "mp3/asc_frontiers.mp3", "wav/drascula_track2.wav",
        "flac/pushover_greek.flac"]
    jobs = small.render_jobs("/o", "/sf.sf2", "FluidR3_GM")
    assert [j["out"] for j in jobs] == [
        "/o/wav/score_bach_bwv66_6.wav", "/o/wav/score_joplin_maple_leaf_rag.wav",
        "/o/wav/score_oneills1850_0626_0700_651.wav", "/o/wav/score_palestrina_agnus_01.wav",
        "/o/wav/score_essenFolksong_fink0_77.wav"]
    assert [j["seed"] for j in jobs] == [0, 1, 2, 3, 4]
    assert jobs[2] == dict(corpus_path="oneills1850/0626-0700.abc", number=651, cat="oneills1850", ensemble="solo",
                           program=73, qpm=110, seed=2, sf2="/sf.sf2", sf_name="FluidR3_GM", clip_start=0.0,
                           clip_dur=20, format="WAV", out="/o/wav/score_oneills1850_0626_0700_651.wav")


def test_small_fades():
    x = np.ones((1000, 2), np.float32)
    small.fade(x, 400)  # 20 samples of ramp at each end
    ramp = np.linspace(0, 1, 20, dtype=np.float32)
    np.testing.assert_array_equal(x[:20, 1], ramp)
    np.testing.assert_array_equal(x[-20:, 0], ramp[::-1])
    assert (x[20:-20] == 1).all()


# --- score renders: captions, instruments, planning, audio shaping ----------------------------

def test_score_captions():
    base = dict(desc="four-part chorale harmonization", composer="Johann Sebastian Bach", era="Baroque",
                title="BWV 66.6", ensemble="string quartet", programs=[40, 40, 41, 42], qpm=80.0, tempo_text=None,
                meter="4/4", key="F sharp minor", soundfont="FluidR3_GM")
    assert score_catalog.score_caption(base) == (
        '"BWV 66.6", four-part chorale harmonization by Johann Sebastian Bach (Baroque), played by a string '
        "quartet (violin, violin, viola, cello), 80 quarter notes per minute, 4/4 time, in F sharp minor. "
        "Synthesized from the score with FluidSynth (FluidR3_GM General MIDI SoundFont).")
    solo = dict(base, title=None, composer=None, desc="air", era="folk", ensemble="solo", programs=[73],
                tempo_text="Allegro", meter=None, key=None, qpm=110.4)
    assert score_catalog.score_caption(solo) == (
        "Air (folk), played as a solo flute melody, marked 'Allegro', 110 quarter notes per minute. "
        "Synthesized from the score with FluidSynth (FluidR3_GM General MIDI SoundFont).")
    assert ", played on piano," in score_catalog.score_caption(dict(base, ensemble="piano", programs=[0, 0]))
    assert "played by violin, viola and cello," in score_catalog.score_caption(dict(base, programs=[40, 41, 42]))
    assert "played by a brass quartet (4 trumpet parts)," in score_catalog.score_caption(
        dict(base, ensemble="brass quartet", programs=[56] * 4))
    assert "voiced with the General MIDI 'choir aahs' sound," in score_catalog.score_caption(
        dict(base, ensemble="choir", programs=[52] * 5))


def test_programs_titles_and_ensembles():
    assert score_catalog.programs_for("string quartet", 4) == [40, 40, 41, 42]
    assert score_catalog.programs_for("string quartet", 3) == [40, 41, 42]
    assert score_catalog.programs_for("string quartet", 5) == [40, 40, 41, 41, 42]
    assert score_catalog.programs_for("string quartet", 1) == [40]
    assert score_catalog.programs_for("choir", 3) == [52, 52, 52]
    assert score_catalog.work_title("bach/bwv66.6", "bach") == "BWV 66.6"
    assert score_catalog.work_title("beethoven/opus18no1/movement2.mxl", "beethoven") == "Op. 18 No. 1, movement 2"
    assert score_catalog.work_title("mozart/k155/movement1.mxl", "mozart") == "K. 155, movement 1"
    cats = score_catalog.CATEGORIES
    assert score_catalog.choose_ensemble(cats["essenFolksong"], 2, random.Random(0)) == "solo"
    assert score_catalog.choose_ensemble(cats["mozart"], 1, random.Random(0)) == "solo"
    assert score_catalog.choose_ensemble(cats["haydn"], 4, random.Random(0)) == "string quartet"
    rnd = random.Random(5)
    assert score_catalog.choose_ensemble(cats["bach"], 4, rnd) == random.Random(5).choice(cats["bach"].ensembles)
    # the shares the published corpora were built with sum to 101.5 %; kept so builds reproduce them
    assert sum(c.share for c in cats.values()) == pytest.approx(1.015)
    assert score_job.clean_title("MAPLE LEAF RAG.", {"corpus_path": "joplin/maple_leaf_rag", "cat": "joplin"}) == \
        "Maple Leaf Rag"
    assert score_job.clean_title("bwv66.6", {"corpus_path": "bach/bwv66.6", "cat": "bach"}) == "BWV 66.6"


def test_render_planning():
    # 0.1 h: bach's budget is 0.22 * 360 s = 79.2 s (up to 87.12 s); estimates at 79 qpm (middle of 66..92)
    pool = {"bach": [("bach/bwv1.6.mxl", None, 79.0),     # 60 s
                     ("bach/bwv2.6.mxl", None, 10.0),     # 7.6 s: under 12 s, skipped
                     ("bach/bwv3.6.mxl", None, 200.0),    # 151.9 s: over the budget, skipped
                     ("bach/bwv4.6.mxl", None, 30.0)],    # 22.8 s
            "oneills1850": [("oneills1850/0001-0050.abc", "7", 40.0)],  # 21.3 s at 115 qpm; budget 50.4 s
            "unknown": [("unknown/x.mxl", None, 50.0)]}
    jobs = score_catalog.plan_renders(pool, 0.1, "/sf2", "FluidR3_GM", "/out/renders", seed=1234)
    order = list(pool["bach"])
    random.Random(1234).shuffle(order)
    bach = [p for p, _, ql in order if ql in (79.0, 30.0)]
    assert [j["corpus_path"] for j in jobs] == bach + ["oneills1850/0001-0050.abc"]
    assert [j["seed"] for j in jobs] == [1234 * 100003 + i for i in range(3)]
    assert jobs[2]["out"] == "/out/renders/oneills1850/00002_0001_0050_7.flac" and jobs[2]["number"] == 7
    stem = bach[0].split("/")[1].replace(".mxl", "").replace(".", "_")
    assert jobs[0]["out"] == f"/out/renders/bach/00000_{stem}.flac"
    assert all(j["format"] == "FLAC" and j["max_s"] == 360.0 for j in jobs)
    assert score_catalog.plan_renders(pool, 0.1, "/sf2", "FluidR3_GM", "/out/renders", seed=1234) == jobs  # a pure function


def test_shape_audio():
    sr = 100
    x = np.concatenate([np.zeros(100), np.full(200, 0.5), np.zeros(1000)]).astype(np.float32)
    y, full_s = score_job.shape_audio(np.stack([x, x], 1), sr, 0.0, 1e9)
    assert full_s == pytest.approx(3.49)   # 2 s of sound and 1.49 s of tail (to the last loud sample + 1.5 s)
    ref = x[100:449] / 0.5 * 10 ** (-1 / 20)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    y, _ = score_job.shape_audio(x.copy(), sr, 0.5, 2.0)  # cut: the last second fades out
    ref = x[150:350] / 0.5
    ref[-100:] *= np.linspace(1, 0, 100, dtype=np.float32)
    np.testing.assert_allclose(y, ref / np.abs(ref).max() * 10 ** (-1 / 20), rtol=1e-6)
    assert score_job.shape_audio(np.zeros(500, np.float32), sr, 0.0, 10.0) is None


def test_patch_midi(tmp_path):
    import mido
    m = mido.MidiFile()
    m.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000), mido.MetaMessage("end_of_track")]))
    for ch, pitch in ((0, 60), (1, 48)):
        m.tracks.append(mido.MidiTrack([
            mido.Message("program_change", channel=ch, program=5),
            mido.Message("note_on", channel=ch, note=pitch, velocity=90, time=0),
            mido.Message("note_off", channel=ch, note=pitch, time=480),
            mido.MetaMessage("end_of_track", time=240)]))
    path = str(tmp_path / "a.mid")
    m.save(path)
    assert score_job.patch_midi(path, [40, 42]) == pytest.approx(0.75)  # 720 ticks = 1.5 beats at 120 qpm
    tracks = mido.MidiFile(path).tracks
    assert [msg.type for msg in tracks[0]] == ["set_tempo", "end_of_track"]
    for tr, ch, prog in ((tracks[1], 0, 40), (tracks[2], 1, 42)):
        assert [(msg.type, getattr(msg, "program", None)) for msg in tr if msg.type == "program_change"] == \
            [("program_change", prog)]
        assert tr[0].type == "program_change" and tr[0].channel == ch
        tail = [(msg.type, getattr(msg, "control", None), msg.time) for msg in tr[-3:]]
        assert tail == [("control_change", 123, 240), ("control_change", 120, 0), ("end_of_track", None, 0)]


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_output_folder_rules(tmp_path):
    stray = tmp_path / "home"
    stray.mkdir()
    (stray / "notes.txt").write_text("keep me")
    with pytest.raises(TokenmillError, match="not empty"):
        build.clear_output(str(stray))
    assert (stray / "notes.txt").exists()
    old = tmp_path / "old"
    (old / "wav").mkdir(parents=True)
    (old / "captions.jsonl").write_text("")
    build.clear_output(str(old))
    assert old.is_dir() and not any(old.iterdir())
    a = build.parse_args(["--target", "large", "--out", "o", "--render_hours", "0"])
    assert (a.target, a.render_hours, a.soundfont) == ("large", 0.0, "fluid-soundfont-gm")
    cfg = build.build_config(a)  # works without fluidsynth (its version is then None)
    assert (cfg["target"], cfg["render_seed"], len(cfg["packages"])) == ("large", 1234, 16)
    assert build.build_config(build.parse_args(["--target", "small", "--out", "o"]))["packages"] == [
        "asc-music", "drascula-music", "fretsonfire-songs-muldjord", "marsshooter-data", "pushover-data",
        "singularity-music", "wesnoth-1.16-music"]
