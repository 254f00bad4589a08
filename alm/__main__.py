"""``python -m alm ...`` is the ``alm`` command (how ``alm serve`` starts its gateway with this interpreter)."""

import sys

from alm.cli import main

sys.exit(main())
