"""Scale-out and high availability beside the data plane: the IPVS sync protocol's messages (``wire``: version 1
built and parsed, version 0 parsed, from one declared layout per structure of the kernel's ``ip_vs_sync.c``), the
multicast sockets of the sync master and backup (``transport``), and announcing VIPs through a BIRD 2 routing
daemon over its control socket (``bgp``). Modules here import only the standard library, pyroute2 (the sync
interface's index and address), ``xlb.errors`` and each other: no bcc, no data plane, no config; the daemon turns
received entries into map writes and decides which VIPs are announced."""
