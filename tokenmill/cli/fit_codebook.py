"""`fit-codebook`: the semantic k-means codebook, or (--stream mulan) the MuLan RVQ."""
from __future__ import annotations

import time
from dataclasses import replace

DESCRIPTION = ("Decode the inputs, extract semantic features, draw a deterministic sample of frames and fit a "
               "FAISS k-means codebook; or, with --stream mulan, embed 10 s windows with the MuLan model, draw a "
               "deterministic sample of windows and fit a residual VQ (12 x 1024 by default). Writes "
               "<kind>-<sha12>.safetensors + a JSON card (sample, model, held-out MSE, usage entropy, dead codes) "
               "and the fit's dead letters. --stream melody does the same with the melody model's 4 s windows "
               "(24 x 512 by default).")


def add_args(p) -> None:
    from tokenmill.pipelines.options import add_fit_codebook_args

    p.description = DESCRIPTION
    add_fit_codebook_args(p)


def run(args, beam_args: list[str]) -> int:
    from tokenmill.cli._jobs import pin_local_compute
    from tokenmill.pipelines import options as opts
    from tokenmill.pipelines.ingest import check_inputs_match
    from tokenmill.pipelines.report import print_fit_summary
    from tokenmill.pipelines.runner import make_pipeline

    pin_local_compute(args, beam_args)  # before any model is built here (describe, fit)
    t0 = time.monotonic()
    cfg = opts.fit_codebook_config(args)
    check_inputs_match(cfg.inputs)
    if args.stream == "mulan":
        from tokenmill.pipelines.mulan import build_fit_mulan, build_model

        desc = build_model(cfg.mulan).describe()  # on the CPU: the workers use cfg.mulan.device
        cfg = replace(cfg, audio=replace(cfg.audio, target_rates_hz=(desc["sample_rate_hz"],)))  # the model's rate
        with make_pipeline(beam_args) as p:
            build_fit_mulan(p, cfg, mulan_desc=desc)
        print_fit_summary(cfg.output, time.monotonic() - t0, kind="mulan")
        return 0
    if args.stream == "melody":
        from tokenmill.pipelines.melody import build_fit_melody, build_model as build_melody_model

        desc = build_melody_model(cfg.melody).describe()
        with make_pipeline(beam_args) as p:
            build_fit_melody(p, cfg, melody_desc=desc)
        print_fit_summary(cfg.output, time.monotonic() - t0, kind="melody")
        return 0
    from tokenmill.pipelines.fit import build_fit
    from tokenmill.pipelines.handlers import semantic_extractor

    desc = semantic_extractor(cfg.semantic).describe()  # on the CPU: workers use cfg.semantic.device
    with make_pipeline(beam_args) as p:
        build_fit(p, cfg, extractor_desc=desc)
    print_fit_summary(cfg.output, time.monotonic() - t0)
    return 0
