"""`python -m retvlp.cli ...` (and `accelerate launch -m retvlp.cli ...`): the `retvlp` command."""

import sys

from . import main

sys.exit(main())
