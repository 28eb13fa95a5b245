"""Memory settings of the command processes."""
from __future__ import annotations

import ctypes

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the system.

    The feature builder allocates and frees arrays of hundreds of MB; by default each one is a fresh mapping
    whose every page faults on first touch (on a virtual machine about a third of a build's time goes to the
    kernel). Without mapped blocks and trimming, a freed array's pages serve the next one. Peak memory grows a
    little (1M customers: 4.4 -> 4.9 GB); the process keeps its peak until it exits. Returns whether the settings
    took (False where malloc is not glibc's)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such symbol (macOS, musl); CDLL(None) itself on Windows
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_TOP_PAD, 256 * 2**20)))
