"""Captions are data in `evaluate` too: the job reads the caption files itself (ReadCaptionRows, an
AsDict side input of LoadClips keyed by ytid), so its serialized graph is the same size for a
`--captions` file of 1 row and of 1,000,000 rows; the launcher only checks the files parse. The
join gives each clip the caption and aspects the launcher's dict used to give it (hand-set values
below); tests/test_evaluate.py checks the MCC it feeds end to end."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import soundfile
from apache_beam.testing.util import assert_that, equal_to

import beam_runner
from tokenmill.pipelines.eval_sources import caption_files, load_clips, resolve_spec
from tokenmill.pipelines.evaluate import EvaluateConfig, build_evaluate
from tokenmill.pipelines.runner import make_pipeline

ROWS = 1_000_000
HEADER = "ytid,start_s,end_s,caption,aspect_list\n"
DESCS = {"embedders": {"mulan": {"name": "mulan"}}, "classifier": None, "classifier_labels": None, "mcc_model": None}


def write_captions(path, n: int) -> None:
    with open(path, "w") as f:
        f.write(HEADER)
        f.writelines(f"y{i:07d},0,10,caption-{i:07d}: a calm piano piece,\"['piano', 'calm']\"\n" for i in range(n))


def graph_bytes(tmp_path, captions) -> bytes:
    """The serialized evaluate job, built (not run) as the CLI builds it, with --captions CAPTIONS."""
    (tmp_path / "gen").mkdir(exist_ok=True)
    for k in ("a", "b"):
        (tmp_path / "gen" / f"{k}.wav").touch()  # resolving a glob only lists the files
    args, _ = beam_runner._parser().parse_known_args(
        ["evaluate", "--generated", str(tmp_path / "gen" / "*.wav"), "--output", str(tmp_path / "report"),
         "--captions", str(captions), "--classifier", "none", "--mulan_model", "none"])
    sides = {"generated": resolve_spec(args.generated, "generated", args.generated_audio)}
    cfg = EvaluateConfig(generated=args.generated, reference=None, output=args.output, classifier=None,
                         mulan_model=None)
    p = make_pipeline([])
    build_evaluate(p, cfg, sides=sides, descs=DESCS, rates_hz=(16_000,), captions=caption_files(args.captions, sides),
                   reused={}, notes=[])
    return p.to_runner_api().SerializeToString()


def test_graph_size_does_not_depend_on_the_number_of_captions(tmp_path):
    """The same path holds 1 row, then 1M rows (70 MB). Beam's graph is not byte-stable between two
    builds (random ids in Reshuffle and RunInference payloads), so the sizes must agree within 1 KiB;
    the launcher used to pickle the parsed rows into the Load step (MusicCaps: 5.5k captions)."""
    path = tmp_path / "captions.csv"
    write_captions(path, 1)
    g1 = graph_bytes(tmp_path, path)
    write_captions(path, ROWS)
    assert path.stat().st_size > 60_000_000
    gm = graph_bytes(tmp_path, path)
    assert abs(len(gm) - len(g1)) <= 1024, (len(g1), len(gm))
    assert b"Captions-Parse" in gm and b"Captions-ByYtid" in gm  # the job reads and joins the file itself


def _wav(path) -> None:
    t = np.arange(3_200) / 16_000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000, subtype="FLOAT")


def _csv(path, rows) -> None:
    path.write_text(HEADER + "".join(f"{y},0,10,{c},\"{a}\"\n" for y, c, a in rows))


def _joined(sides, captions) -> list:
    p = beam.Pipeline()
    sources = [s for r in sides.values() for s in r.sources]
    out = load_clips(p, sources, (16_000,), caption_files(captions, sides), None, None)
    return p, out.clips | beam.Map(lambda c: (c.side, c.key, c.caption, c.aspects))


def test_clips_get_their_captions_through_the_join(tmp_path):
    """Precedence, as the launcher's dict had it: a CSV SPEC clip's own row first; what it lacks
    from the first row of its key among --captions, the generated CSV, the reference CSV."""
    for side, keys in (("gen", ("g1", "g2", "g3", "g4")), ("ref", ("g1", "g2", "g3", "r5"))):
        (tmp_path / side).mkdir()
        for k in keys:
            _wav(tmp_path / side / f"{k}.wav")
    _csv(tmp_path / "gen" / "gen.csv", [("g1", "own g1", ["own-a"]), ("g2", "", []), ("g3", "", ["own-c"]),
                                        ("g4", "own g4", [])])
    _csv(tmp_path / "ref" / "ref.csv", [("g1", "", []), ("g2", "", []), ("g3", "ref g3", ["ref-c"]),
                                        ("r5", "", [])])
    _csv(tmp_path / "caps.csv", [("g1", "cap g1", ["cap-a"]), ("g2", "cap g2", ["cap-b"]),
                                 ("g4", "cap g4", ["cap-d"]), ("zz", "no clip", ["x"])])
    sides = {"generated": resolve_spec(str(tmp_path / "gen" / "gen.csv"), "generated"),
             "reference": resolve_spec(str(tmp_path / "ref" / "ref.csv"), "reference")}
    assert all(s.caption is None for r in sides.values() for s in r.sources)  # the graph holds no caption
    p, got = _joined(sides, str(tmp_path / "caps.csv"))
    assert_that(got, equal_to([
        ("generated", "g1", "own g1", ("own-a",)),
        ("generated", "g2", "cap g2", ("cap-b",)),
        ("generated", "g3", None, ("own-c",)),   # its key's first row is its own (no --captions row)
        ("generated", "g4", "own g4", ("cap-d",)),
        ("reference", "g1", "cap g1", ("cap-a",)),
        ("reference", "g2", "cap g2", ("cap-b",)),
        ("reference", "g3", "ref g3", ("ref-c",)),
        ("reference", "r5", None, ())]))
    p.run().wait_until_finish()

    # a glob SPEC (no rows of its own) against a CSV reference, no --captions: the common MusicCaps run
    sides = {"generated": resolve_spec(str(tmp_path / "gen" / "*.wav"), "generated"),
             "reference": resolve_spec(str(tmp_path / "ref" / "ref.csv"), "reference")}
    p, got = _joined(sides, None)
    assert_that(got | beam.Filter(lambda x: x[0] == "generated"), equal_to([
        ("generated", "g1", None, ()), ("generated", "g2", None, ()),
        ("generated", "g3", "ref g3", ("ref-c",)), ("generated", "g4", None, ())]))
    p.run().wait_until_finish()
