"""python3 -m memfit: profile, report, plan and verify from the command line."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
