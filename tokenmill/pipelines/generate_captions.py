"""`generate --captions musiccaps.csv --output DIR`: one clip per caption row, as a Beam job.

    rows ─► Reshuffle ─► RunInference(CaptionGenerateHandler) ─► DIR/{ytid}.wav + DIR/{ytid}.json
                                                            └─► dead letters ─► DIR/failures.jsonl
    then DIR/generate.json: the config, the checkpoints, and counts (rows = clips + dead letters).

Each worker loads the three stages, the dataset's MuLan text tokenizer and codec once. Each row is
generated on its own (batch 1) with --seed replaced by clip_seed(seed, ytid), so a clip's audio
depends on (seed, ytid) and the checkpoints only, never on which rows share a RunInference batch
or a worker (prompts batched into one forward pass would share one sampling generator).
Length: --seconds, or the row's end_s - start_s rounded down to the 40 ms grid. The sidecar is the
`generate` sidecar plus the row (ytid, caption, aspects, start_s, end_s). `evaluate --generated
'DIR/*.wav' --reference musiccaps.csv` then scores the clips by ytid.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from tokenmill.eval.musiccaps import CaptionRow
from tokenmill.pipelines.handlers import Failed
from tokenmill.pipelines.ingest import DEAD, dead_letter
from tokenmill.pipelines.sinks import atomic_write
from tokenmill.schemas import rates
from tokenmill.schemas.shards import encode_dead_letters
from tokenmill.training.generate import GenerateConfig, GenerateError

LOG = logging.getLogger("tokenmill")


@dataclass(frozen=True)
class CaptionsJob:
    captions: str
    output: str
    paths: dict  # stage -> checkpoint path
    config: GenerateConfig  # its seed is the job's seed; each clip uses clip_seed(seed, ytid)
    seconds: float | None  # None: each row's length
    mulan_model: str | None = None
    mulan_path: str | None = None
    mulan_codebook: str | None = None
    acoustic_model: str | None = None
    torch_threads: int = 0


def clip_seconds(row: CaptionRow, seconds: float | None) -> float:
    if seconds is not None:
        return seconds
    q = math.floor((row.end_s - row.start_s) * rates.QUANTA_PER_S + 1e-9)
    if q < 1:
        raise GenerateError(f"ytid {row.ytid}: [{row.start_s}, {row.end_s}) is shorter than 40 ms; pass --seconds")
    return float(rates.seconds_of_quanta(q))


@dataclass
class _Loaded:
    stages: dict
    tokenizer: object
    codec: object


class CaptionGenerateHandler(ModelHandler):
    def __init__(self, job: CaptionsJob):
        super().__init__(min_batch_size=1, max_batch_size=8)
        self.job = job

    def load_model(self) -> _Loaded:
        from tokenmill.training.generate import dataset_text_tokenizer, load_codec, load_stages

        if self.job.torch_threads:
            import torch

            torch.set_num_threads(self.job.torch_threads)
        stages = load_stages(self.job.paths, self.job.config.device)
        tok = dataset_text_tokenizer(stages, model=self.job.mulan_model, path=self.job.mulan_path,
                                     codebook=self.job.mulan_codebook)
        return _Loaded(stages, tok, load_codec(stages, self.job.acoustic_model))

    def _one(self, row: CaptionRow, m: _Loaded) -> dict:
        from tokenmill.training.generate import clip_seed, generate_music

        if not row.caption:
            raise GenerateError(f"ytid {row.ytid}: the row has no caption to generate from")
        cfg = replace(self.job.config, seconds=clip_seconds(row, self.job.seconds), batch=1,
                      seed=clip_seed(self.job.config.seed, row.ytid))
        out = self.job.output.rstrip("/")
        with tempfile.TemporaryDirectory(prefix="tokenmill-gen-") as tmp:
            wav = os.path.join(tmp, f"{row.ytid}.wav")
            music = generate_music(row.caption, m.stages, cfg, wav, tokenizer=m.tokenizer, codec=m.codec)
            with open(wav, "rb") as f:
                data = f.read()
        side = {**music.sidecar, "wavs": [f"{out}/{row.ytid}.wav"], "job_seed": self.job.config.seed,
                "row": {"ytid": row.ytid, "caption": row.caption, "aspects": list(row.aspects),
                        "start_s": row.start_s, "end_s": row.end_s}}
        atomic_write(f"{out}/{row.ytid}.wav", data)
        atomic_write(f"{out}/{row.ytid}.json", (json.dumps(side, indent=1) + "\n").encode())
        return {"ytid": row.ytid, "seconds": cfg.seconds, "seed": cfg.seed}

    def run_inference(self, batch: Sequence[CaptionRow], model: _Loaded, inference_args=None):
        out = []
        for row in batch:
            try:
                r = self._one(row, model)
            except Exception as e:  # noqa: BLE001 — this row's dead letter
                r = Failed(e)
            out.append(PredictionResult(row, r))
        return out

    def get_metrics_namespace(self) -> str:
        return "tokenmill_generate"


class _Split(beam.DoFn):
    def process(self, pr: PredictionResult):
        if isinstance(pr.inference, Failed):
            e = pr.inference.exc
            if not isinstance(e, GenerateError):
                LOG.warning("unexpected %s generating %s: %s", type(e).__name__, pr.example.ytid, e)
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(pr.example.ytid, "generate", e, key=pr.example.ytid))
        else:
            LOG.info("generate: %s (%.2f s) written", pr.inference["ytid"], pr.inference["seconds"])
            yield pr.inference


class _Summary(beam.DoFn):
    def __init__(self, job: CaptionsJob, n_rows: int):
        self.job, self.n_rows = job, n_rows

    def process(self, _, done: list, dead: list):
        if len(done) + len(dead) != self.n_rows:
            raise GenerateError(f"{self.n_rows} caption rows but {len(done)} clips + {len(dead)} dead letters")
        out = self.job.output.rstrip("/")
        dead = sorted(dead, key=lambda d: d.sort_key())
        atomic_write(f"{out}/failures.jsonl", encode_dead_letters(dead))
        summary = {"captions": self.job.captions, "rows": self.n_rows, "clips": len(done), "dead_letters": len(dead),
                   "config": asdict(self.job.config), "seconds": self.job.seconds,
                   "checkpoints": {k: str(v) for k, v in self.job.paths.items()},
                   "seeds": "clip_seed(config.seed, ytid) = SeedSequence([seed, sha256(ytid)[:8]])",
                   "clips_written": sorted(d["ytid"] for d in done)}
        atomic_write(f"{out}/generate.json", (json.dumps(summary, indent=1) + "\n").encode())
        yield summary


def build_generate_captions(p: beam.Pipeline, job: CaptionsJob, rows: list[CaptionRow]) -> beam.PCollection:
    res = (p | "Rows" >> beam.Create(rows) | "Spread" >> beam.Reshuffle()
           | "Generate" >> RunInference(CaptionGenerateHandler(job))
           | "Split" >> beam.ParDo(_Split()).with_outputs(DEAD, main="clips"))
    return (p | "Once" >> beam.Create([None])
            | "Summary" >> beam.ParDo(_Summary(job, len(rows)), beam.pvalue.AsList(res.clips),
                                      beam.pvalue.AsList(res[DEAD])))
