"""The reference agent's default limits, apart from the agent itself: ``hil``'s argument parser
shows them, and importing the agent (its protocol, links and server) for every command, ``hil
run`` included, cost a third of the command's start-up."""

DEFAULT_MAX_OP_US = 10_000_000  #: the longest DELAY, POLL or SETTLE of one op (10 s)
DEFAULT_MAX_PROGRAM_US = 30_000_000  #: the most DELAY/POLL/SETTLE time in one program (30 s)
DEFAULT_HELLO_TIMEOUT = 5.0  #: seconds a new connection has to complete HELLO
DEFAULT_IDLE_TIMEOUT = 60.0  #: seconds an authenticated connection may stay silent
