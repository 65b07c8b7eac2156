#!/usr/bin/env python
"""tokenmill command line from a checkout: `python beam_runner.py COMMAND ...` is the `tokenmill`
console script (tokenmill/cli/). Under torchrun: `torchrun --nproc_per_node 2 beam_runner.py train ...`."""
import sys

from tokenmill.cli import build_parser as _parser  # noqa: F401 (tests build the whole parser)
from tokenmill.cli import main

if __name__ == "__main__":
    sys.exit(main())
