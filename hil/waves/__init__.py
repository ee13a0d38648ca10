"""Waveforms of the simulator: VCD files and GTKWave views (:mod:`hil.waves.vcd`)."""
