"""Moved to ``bft.clusterconf`` (the cluster config is shared by replicas, clients and tools); this
name stays importable as the same module object."""

import sys

from bft import clusterconf as _moved

sys.modules[__name__] = _moved
