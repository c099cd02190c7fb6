"""``allxai serve``: run the gateway, registered in the ``allxai.commands`` entry-point group.

It imports only the standard library until the gateway starts, so listing ``allxai``'s commands stays cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def serve(argv: Sequence[str]) -> int:
    """Run the gateway; its settings come from ALLXAI_* environment variables."""
    parser = argparse.ArgumentParser(
        prog="allxai serve",
        description="Run the allxai gRPC gateway until SIGTERM or ctrl-C. Every setting comes from an "
        "ALLXAI_* environment variable (or a .env file), for example ALLXAI_MODEL_BASE_PATH (the SavedModel "
        "base folder), ALLXAI_BACKEND (embedded or tfserving), ALLXAI_HOST and ALLXAI_PORT; the README's "
        "settings table lists them all with their defaults.",
    )
    parser.parse_args(list(argv))
    from allxai.server.app import main  # noqa: PLC0415  (the gateway's imports are heavy)

    return main()
