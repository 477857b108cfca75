"""``python -m nas`` runs the CLI."""

from __future__ import annotations

import sys

from nas.cli import main

sys.exit(main())
