"""The data plane as the control plane sees it: the XDP program and everything around its maps.

Loading (``program``: bcc, kernel headers, flags; ``bpfsys``: raw bpf syscalls; ``libbpf``: libbpf's object calls;
``structs``: ctypes mirrors of bpf/*.h; ``pin``/``bpffs``: pinned maps; ``layout``: the layout record beside them;
``links``: what an interface has attached; ``testrun``, ``clock``), the host around it (``neigh``, ``forwarding``
sysctls, ``vethpeer``), and DataPlane, which writes and reads the maps: ``apply`` (plan, check, apply the
difference), ``sweep`` (the timers), ``reader`` (the one decoder of map contents that listings, observers and the
sweep ask), ``adopt`` (pinned maps of a previous daemon), ``settingsmap`` (the settings entry: timeouts, lookup flags), with ``mapkeys``, ``alloc`` and ``rowmatch`` (numpy joins)
under them. May import xlb.tables, xlb.config and xlb.errors; never the daemon, the CLI or the observers.
"""
