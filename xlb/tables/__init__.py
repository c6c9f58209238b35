"""The pure builders of what the data plane indexes: scheduling tables (``sched``: Maglev, wrr, rr, sh/dh, the
connection-count candidates), the mark rules' trie entries and identities (``marks``), the VIP filter's bits
(``vipfilter``). No maps, no kernel: lists and integers in, lists and integers out.
May import xlb.config.model and xlb.errors, and the compiled constants of xlb.dataplane.structs (which imports nothing).
"""
