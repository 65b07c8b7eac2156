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
from apache_beam.options.pipeline_options import (
    DirectOptions, PipelineOptions, StandardOptions, WorkerOptions,
)

from tokenmill.errors import UsageError

EMBEDDED = ("DirectRunner", "FnApiRunner", None)
LOG = logging.getLogger("tokenmill")
LAST_RESULT = None  # PipelineResult of the latest job a make_pipeline() pipeline ran (`with` block)


class _Pipeline(beam.Pipeline):
    """beam.Pipeline that, when its `with` block has run the job, keeps the PipelineResult in
    LAST_RESULT (tests read the job's counters from it) and logs one line of its counters."""

    def __exit__(self, exc_type, exc_val, exc_tb):
        global LAST_RESULT
        super().__exit__(exc_type, exc_val, exc_tb)
        if exc_type is None:
            LAST_RESULT = self.result
            if not self._options.view_as(StandardOptions).no_wait_until_finish:
                log_counters(self.result)


def tokenmill_counters(result) -> dict[str, int]:
    """The job's "tokenmill" counters by name, summed over steps (committed values where the
    runner reports them, else attempted)."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace("tokenmill"))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def log_counters(result) -> None:
    try:
        counters = tokenmill_counters(result)
    except Exception as e:  # noqa: BLE001 — a runner without metrics support must not fail the job
        LOG.info("metrics: not available from this runner (%s)", e)
        return
    if counters:
        LOG.info("metrics: %s", ", ".join(f"{k}={v}" for k, v in counters.items()))


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    options = PipelineOptions(beam_args)
    harness = options.view_as(WorkerOptions)
    if harness.sdk_harness_log_level_overrides is None:
        # Workers log Beam's INFO internals (batch statistics, gRPC) by default; keep ours only.
        harness.sdk_harness_log_level_overrides = {"apache_beam": "WARNING"}
    runner_name = options.view_as(StandardOptions).runner
    if runner_name in EMBEDDED:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode == "multi_processing" and not direct.direct_num_workers:
            direct.direct_num_workers = 0  # 0 = one worker per CPU core
        LOG.info(
            "runner: embedded FnApiRunner (mode=%s, workers=%s)", direct.direct_running_mode,
            direct.direct_num_workers or "auto")
        return _Pipeline(runner=FnApiRunner(), options=options)
    return _Pipeline(options=options)


def check_beam_args(beam_args: list[str], own_options: list[str]) -> None:
    """Refuse arguments that neither tokenmill nor any Beam PipelineOptions class defines.

    Beam itself only logs "Unparseable argument" and drops them, so a typo such as --num_shard
    would silently run with the default. `own_options` feeds the did-you-mean suggestion.
    """
    import difflib

    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 — the way Beam collects its own options
    _, unknown = parser.parse_known_args(beam_args)
    flags = [a for a in unknown if a.startswith("-")]
    if flags:
        known = own_options + [o for a in parser._actions for o in a.option_strings]  # noqa: SLF001
        hints = []
        for a in flags:
            close = difflib.get_close_matches(a.split("=", 1)[0], known, n=1)
            hints.append(f"{a}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise UsageError("unknown option(s): " + ", ".join(hints) + "; see --help")
    if unknown:
        raise UsageError(f"unexpected argument(s): {' '.join(unknown)}; quote globs so the shell "
                         "does not expand them, and repeat --input for several patterns")
