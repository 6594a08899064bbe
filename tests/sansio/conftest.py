"""Hypothesis profiles for the property tests of the pure protocol code.

``RAWSTREAM_HYPOTHESIS_PROFILE`` selects one:

* ``ci`` (the default): a bounded number of examples per test, so the whole set of
  property tests stays within a few seconds;
* ``long``: fifty times more, for a search before a release or after a change
  to a parser: ``RAWSTREAM_HYPOTHESIS_PROFILE=long pytest tests/sansio -k properties``.

Neither writes an example database into the checkout; a failure prints the
falsifying example and the ``@reproduce_failure`` blob that replays it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_VARIABLE = "RAWSTREAM_HYPOTHESIS_PROFILE"

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=5_000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get(PROFILE_VARIABLE, "ci"))
