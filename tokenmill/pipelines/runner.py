"""Pipeline construction from Beam options, and the embedded default runner.

Beam's `DirectRunner` first tries the Prism runner, which downloads a runner binary from GitHub;
offline that costs a failed download before it falls back. When no runner (or DirectRunner) is
asked for, tokenmill uses Beam's in-process portable runner (FnApiRunner) directly, which is what
DirectRunner falls back to. It honours --direct_running_mode (in_memory, multi_threading,
multi_processing) and --direct_num_workers. Any other --runner is passed to Beam untouched.
"""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

EMBEDDED = ("DirectRunner", "FnApiRunner", None)


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    options = PipelineOptions(beam_args)
    runner_name = options.view_as(StandardOptions).runner
    if runner_name in EMBEDDED:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode == "multi_processing" and not direct.direct_num_workers:
            direct.direct_num_workers = 0  # 0 = one worker per CPU core
        logging.getLogger("tokenmill").info(
            "runner: embedded FnApiRunner (mode=%s, workers=%s)", direct.direct_running_mode,
            direct.direct_num_workers or "auto")
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)
