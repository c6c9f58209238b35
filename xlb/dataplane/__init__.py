"""The data plane as the control plane sees it: the XDP program and everything around its maps.

Loading (``program``: bcc, kernel headers, flags; ``bpfsys``: raw bpf syscalls; ``structs``: ctypes mirrors of
bpf/*.h; ``pin``/``bpffs``: pinned maps and the layout record; ``testrun``, ``clock``), the host around it
(``neigh``, ``forwarding`` sysctls, ``vethpeer``), and the code that writes and reads the maps (``apply``).
May import xlb.tables, xlb.config.model and xlb.errors; nothing here imports the daemon, the CLI or the observers.
"""
