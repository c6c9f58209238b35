"""What an operator watches: Prometheus metrics (``metrics``), per-flow and per-real counters (``stats``), the live
table (``top``) and a packet's path through the trace build of the program (``trace``). Reads the maps through
xlb.dataplane; may import xlb.dataplane, xlb.tables, xlb.config and xlb.errors, never the daemon or the CLI.
"""
