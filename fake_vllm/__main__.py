"""``python -m fake_vllm serve MODEL ...``: the same as the ``fake-vllm`` command."""

import sys

from fake_vllm.cli import main

sys.exit(main())
