"""Kept for compatibility: the program vocabulary moved to :mod:`hil.ops` (the bottom layer).

Code outside the package imported the operations from here; it still may. Nothing inside ``hil``
imports this module.
"""

from hil.ops import *  # noqa: F403  # the whole vocabulary, as before
from hil.ops import __all__ as __all__
