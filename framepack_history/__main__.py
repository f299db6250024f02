"""``python -m framepack_history``: see :mod:`framepack_history.cli.main`."""

import sys

from framepack_history.cli.main import main

sys.exit(main())
