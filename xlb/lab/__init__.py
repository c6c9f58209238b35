"""Throwaway topologies for the demo, the tests and the bench: network namespaces, veth pairs and small servers
(``netns``) and ``xlb demo`` (``demo``). Not used by the daemon. May import anything below the CLI.
"""
