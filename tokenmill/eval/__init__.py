"""Evaluation kernels (pure: numpy/POT in, numbers out; no Beam). The Beam jobs that run them
are in tokenmill/pipelines/.

  ot.py            optimal-transport cost between two token windows (POT: exact or Sinkhorn)
  windows.py       rolling hashes of token windows (exact copies) and histogram sketches (a lower
                   bound of the OT cost, the prefilter of approximate copies)
  memorization.py  the self-continuation protocol: examples, prompts, matches, tau, intervals
  search.py        generated windows against streamed training records (exact + approximate)
  report.py        memorization.json summaries and the PNG plots
"""
from tokenmill.errors import TokenmillError


class EvalError(TokenmillError, ValueError):
    """Bad input to an evaluation (config, tokens, codebook); the message names it and the fix."""
