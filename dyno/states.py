"""The operator states of a node (Dynomite's), set on the admin port (/state/<name>).

STANDBY refuses client reads and writes, WRITES_ONLY refuses reads; RESUMING serves
like NORMAL. A small module of constants that imports nothing of dyno's, so that
every part can name them without reaching for the node.
"""

NORMAL, STANDBY, WRITES_ONLY, RESUMING = "NORMAL", "STANDBY", "WRITES_ONLY", "RESUMING"
OPERATOR_STATES = (NORMAL, STANDBY, WRITES_ONLY, RESUMING)
