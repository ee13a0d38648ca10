"""lpc-hil: an asyncio hardware-in-the-loop bridge to the PC/AT ISA/LPC 8237A DMA controller."""

__version__ = "0.1.0"
