"""`python -m gossamer` runs the `gossamer` command."""

import sys

from gossamer.cli.main import main

sys.exit(main())
