"""`python -m ovsnat.cli`: the `ovsnat` command (ovsnat.cli.main)."""

import sys

from ovsnat.cli.main import main

sys.exit(main())
