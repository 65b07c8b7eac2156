"""Evaluation kernels (pure: numpy/scipy/POT/torch in, numbers out; no Beam). The Beam jobs that
run them are in tokenmill/pipelines/ (evaluate.py, memorization.py).

  fad.py, kld.py, mcc.py, intervals.py   FAD (Gaussian statistics, Fréchet distance, FAD-inf,
                   bootstrap), KLD between label distributions, MCC (text/audio cosine), intervals
  embedders/, classifiers/               the embedder and classifier plug-ins (lazy tables)
  musiccaps.py, clips.py, artifact.py    MusicCaps rows, clip loading, reference-statistics artifacts
  report.py        the evaluation report (report.json, report.md, plots)
  ot.py            optimal-transport cost between two token windows (POT: exact or Sinkhorn)
  windows.py       rolling hashes of token windows (exact copies) and histogram sketches (a lower
                   bound of the OT cost, the prefilter of approximate copies)
  memorization.py  the self-continuation protocol: examples, prompts, matches, tau, intervals
  search.py        generated windows against streamed training records (exact + approximate)
  memorization_report.py   memorization.json summaries and the PNG plots
"""
from __future__ import annotations

from tokenmill.errors import TokenmillError


class EvalError(TokenmillError, ValueError):
    """Bad input to an evaluation (config, tokens, codebook, clip); the message names it and the fix."""

    reason = "unscorable"  # a clip's dead-letter reason
