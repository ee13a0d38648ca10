"""Benches shared through labgrid: places on a labgrid coordinator as lpc-hil backends.

:mod:`hil.labgrid.address` parses ``labgrid:`` URLs, selectors and the place tags lpc-hil
reads; :mod:`hil.labgrid.lock` is the rule that tells a stale lock from a live one;
:mod:`hil.labgrid.session` is the coordinator connection (labgrid's own asyncio client);
:mod:`hil.labgrid.backend` the backend; :mod:`hil.labgrid.pytest` what a pytest plugin needs
(waiting for a busy place, ``--lg-env`` files). The ``labgrid`` package itself is imported
only when a coordinator is contacted, so everything else works without it
(docs/reference/labgrid.md).
"""
