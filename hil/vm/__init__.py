"""A Linux VM that rehearses a bench: QEMU's PC, a real kernel, ``hil agent --io devport`` inside.

* :mod:`~hil.vm.cpio`: the initramfs archive format;
* :mod:`~hil.vm.image`: the guest image, built from this host's Python and the ``hil`` package;
* :mod:`~hil.vm.guest`: the guest's ``/init``;
* :mod:`~hil.vm.kernel`: finding (and fetching) the kernel the VM boots;
* :mod:`~hil.vm.qmp`: QEMU's monitor, to pause, resume and reset the VM;
* :mod:`~hil.vm.instance`: one running VM: its QEMU process, files, console and monitor.
* :mod:`~hil.vm.backend`: :class:`VmBackend`, the agent backend over the VM's serial line.

"""

from hil.vm.backend import OPTIONS, VmBackend, VmConfig, from_url, parse_config

__all__ = ["OPTIONS", "VmBackend", "VmConfig", "from_url", "parse_config"]
