"""framepack_history: long video generation with a compressed history embedding."""

import logging
import os
import sys

__version__ = "0.1.0"

# bitsandbytes (imported by diffusers' quantizers) warns on every CPU start
# that an optional kernel package is missing; that is expected here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# ... and, offline, asks the kernels package for a hub kernel, which warns that it cannot check the
# publisher; the CPU path works without that kernel, and a CLI error must stay one line.
logging.getLogger("kernels").setLevel(logging.ERROR)

# Weight streaming frees and reallocates block-sized buffers every step; with the caching
# allocator's fixed segments that leaves gigabytes reserved but unusable on a 12 GB card
# (seen as an out-of-memory error in the VAE decode with 1.7 GiB reserved and free).
# Expandable segments avoid it. Read when CUDA first allocates, so set before any model loads;
# a user's own setting wins.
if sys.platform == "linux":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
