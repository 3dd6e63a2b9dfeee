"""`python -m gpo_bench` is the `gpo-bench` command."""

import sys

from .cli import main

sys.exit(main())
