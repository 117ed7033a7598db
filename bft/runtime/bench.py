"""Moved to ``bft.tools.bench`` (operator tools live in ``bft/tools/``); this name stays importable
as the same module object, so ``bft.runtime.bench`` keeps working for existing scripts."""

import sys

from bft.tools import bench as _moved

if __name__ == "__main__":
    raise SystemExit(_moved.main())
sys.modules[__name__] = _moved
