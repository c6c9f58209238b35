"""keepalived.conf's virtual_server part as xlb's config: ``reader`` reads the file the way keepalived's own parser
does (includes, parameters, ~SEQ, braces) into a tree of keyword nodes; ``translate`` checks what keepalived checks
and builds the xlb config from it. May import xlb.config, xlb.importers.iptables and xlb.errors.
"""
