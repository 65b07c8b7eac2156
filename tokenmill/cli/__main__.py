"""`python -m tokenmill.cli COMMAND ...` (also under torchrun: `torchrun ... -m tokenmill.cli train ...`)."""
import sys

from tokenmill.cli import main

sys.exit(main())
