"""The PC/AT 8237A model: pure state machines, no I/O, no asyncio (see :mod:`hil.sim.machine`)."""
