"""Suite-wide test settings: the Hypothesis profiles.

`ci` replays the same examples on every run (derandomized) and prints the blob to reproduce a failure;
`dev` explores new examples each run. Neither has a per-example deadline: on a loaded shared machine a
deadline fails tests for being slow, not for being wrong. Pick one with HYPOTHESIS_PROFILE (default: dev).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, max_examples=100)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
