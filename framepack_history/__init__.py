"""framepack_history: long video generation with a compressed history embedding."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by diffusers' quantizers) warns on every CPU start
# that an optional kernel package is missing; that is expected here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
