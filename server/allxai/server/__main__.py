"""``python -m allxai.server``: run the gateway with settings from ``ALLXAI_*``."""

import sys

from allxai.server.app import main

sys.exit(main())
