"""Running a balancer: the daemon (``daemon``: start, reload, signals, timers), its control socket (``control``),
runtime edits (``admin``) and their ipvsadm spelling (``ipvsadm``; its listings: ``ipvslist``), the listings and
rate estimator (``listings``). May import xlb.observe, xlb.dataplane, xlb.tables, xlb.importers, xlb.config and
xlb.errors; never the CLI or the lab.
"""
