"""``python -m framepack_history``: see :mod:`framepack_history.cli`."""

import sys

from .cli import main

sys.exit(main())
