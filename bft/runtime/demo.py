"""Moved to ``bft.tools.demo`` (operator tools live in ``bft/tools/``); this name stays importable
as the same module object, so ``bft.runtime.demo`` keeps working for existing scripts."""

import sys

from bft.tools import demo as _moved

if __name__ == "__main__":
    raise SystemExit(_moved.main())
sys.modules[__name__] = _moved
