"""Helpers around the ``qemu:`` backend: random register programs for the bit-exact check of the
simulator's ``qemu`` profile against QEMU itself (:mod:`hil.qemu.randprog`)."""
