"""The node's operator states (Dynomite's), set on the admin port (``/state/<name>``).

STANDBY refuses client reads and writes, WRITES_ONLY refuses reads; RESUMING serves
like NORMAL. Gossip carries a node's state to its peers (``dyno.membership.State``
spells the same names), which route around a STANDBY node.

Several parts read these names (the node, the coordinator, the admin port, the
metrics), so they live here, in a module that imports nothing of dyno's: no part
has to import the node to learn them.
"""

NORMAL, STANDBY, WRITES_ONLY, RESUMING = "NORMAL", "STANDBY", "WRITES_ONLY", "RESUMING"
OPERATOR_STATES = (NORMAL, STANDBY, WRITES_ONLY, RESUMING)
