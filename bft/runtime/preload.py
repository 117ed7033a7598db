"""Moved to ``bft.tools.preload`` (operator tools live in ``bft/tools/``); this name stays importable
as the same module object, so ``bft.runtime.preload`` keeps working for existing scripts."""

import sys

from bft.tools import preload as _moved

sys.modules[__name__] = _moved
