"""Benchmarks the ``hil bench`` command runs: :mod:`hil.bench.link` measures an agent link against
the physical minimum of the wire in use. They sit above the driver layer (they program channels
through :class:`hil.dma.IsaDma` and dump registers with :mod:`hil.regs`) and above the agent,
which may not import either."""
