"""xlb: a layer-4 load balancer with an XDP data plane and LVS semantics."""

__version__ = "0.1.0"
