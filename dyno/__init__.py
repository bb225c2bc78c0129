"""dyno: a Dynamo layer that turns single-server Redis into a sharded, replicated cluster.

Wire-compatible with Netflix Dynomite's configuration, ring and consistency levels.
"""

__version__ = "0.1.0"
