"""The files the ``qemu:`` backend makes for QEMU: the halt firmware of ``cpu=halt`` and the
generated floppy image of ``floppy=generate``. Pure functions, no I/O: the backend writes them
into its private directory."""

from __future__ import annotations

FLOPPY_SECTORS = 2880  #: 1.44 MB: 80 cylinders, 2 heads, 18 sectors of 512 bytes
SECTOR = 512


def halt_firmware() -> bytes:
    """A 64 KiB BIOS image: ``cli; hlt; jmp $-1`` at the reset vector (offset 0xFFF0), zero
    elsewhere (docs/reference/qemu-qtest.md §1.1). QEMU wants a non-zero multiple of 64 KiB."""
    image = bytearray(0x10000)
    image[0xFFF0:0xFFF4] = b"\xfa\xf4\xeb\xfd"
    return bytes(image)


_RAMP = bytes(range(256)) * 3


def floppy_sector(lba: int) -> bytes:
    """Sector ``lba`` of a generated image: byte i is ``(13 * lba + i) & 0xFF`` (docs/reference/qemu-qtest.md §6)."""
    start = (13 * lba) & 0xFF
    return _RAMP[start : start + SECTOR]


def floppy_image() -> bytes:
    """The whole generated 1.44 MB image."""
    return b"".join(floppy_sector(n) for n in range(FLOPPY_SECTORS))
