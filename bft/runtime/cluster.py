"""Moved to ``bft.tools.cluster`` (operator tools live in ``bft/tools/``); this name stays importable
as the same module object, so ``bft.runtime.cluster`` keeps working for existing scripts."""

import sys

from bft.tools import cluster as _moved

if __name__ == "__main__":
    raise SystemExit(_moved.main())
sys.modules[__name__] = _moved
