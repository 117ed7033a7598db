"""Moved to ``bft.tools.keygen`` (operator tools live in ``bft/tools/``); this name stays importable
as the same module object, so ``bft.runtime.keygen`` keeps working for existing scripts."""

import sys

from bft.tools import keygen as _moved

if __name__ == "__main__":
    raise SystemExit(_moved.main())
sys.modules[__name__] = _moved
