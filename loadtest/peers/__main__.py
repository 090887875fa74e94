"""``python -m loadtest.peers``."""

import sys

from loadtest.peers import main

sys.exit(main())
