"""Import KServe without letting it parse our command line.

``kserve.model_server`` runs ``argparse.parse_known_args()`` on ``sys.argv`` at import time. Its options
are prefix-matched, so ``clinrisk serve --config x.yaml`` would be read as ``--configure_logging x.yaml``
and abort. Every clinrisk import of kserve goes through :func:`import_kserve`, which hides argv meanwhile;
server options are passed explicitly to ``ModelServer`` instead.
"""

from __future__ import annotations

import sys
from types import ModuleType


def import_kserve() -> ModuleType:
    """``import kserve`` with an empty argument list (idempotent)."""
    if "kserve.model_server" in sys.modules:
        import kserve

        return kserve
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve
        import kserve.errors
        import kserve.model_server
    finally:
        sys.argv = argv
    return kserve
