"""Throwaway topologies for the demo, the tests and the bench: network namespaces, veth pairs and bridges
(``netns``), code run inside them (``process``), small servers and clients that say who answered (``servers``),
the DR lab behind ``xlb demo`` (``demo``), BIRD in a namespace (``bird``) and the ECMP lab of several balancers
behind a BGP router (``ecmp``). Not used by the daemon. May import xlb.ops (the control socket's client),
xlb.dataplane, xlb.sync and xlb.errors; the CLI hands ``demo`` its main instead of being imported by it.
"""
