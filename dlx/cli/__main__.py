"""``python -m dlx.cli``: the ``dlx`` command."""

import sys

from dlx.cli import main

sys.exit(main())
