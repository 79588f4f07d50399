"""`python -m steplog`: the command line."""

import sys

from steplog.commands.cli import main

sys.exit(main())
