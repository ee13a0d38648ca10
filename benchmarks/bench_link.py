"""Agent link benchmark: `hil bench link` as a script. Prints figures and ratios; asserts nothing.

Simulated FT232H-like link (3 Mbaud, 1 ms latency each way by default): channel programming
(target: exactly one round trip), reading every register, reading 64 KiB, each as a ratio to the
physical minimum for that link (target <= 1.25); then raw ops/s over a pty with no shaping.
"""

import sys

from hil.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "link", *sys.argv[1:]]))
