"""Moved to ``bft.tools.attack`` (operator tools live in ``bft/tools/``); this name stays importable
as the same module object, so ``bft.runtime.attack`` keeps working for existing scripts."""

import sys

from bft.tools import attack as _moved

if __name__ == "__main__":
    raise SystemExit(_moved.main())
sys.modules[__name__] = _moved
