"""``python -m asymvq <command>``: the commands live in :mod:`asymvq.cli.main`."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
