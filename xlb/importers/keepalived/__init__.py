"""keepalived.conf's virtual_server part as xlb's config: ``reader`` reads the file the way keepalived's own parser
does (includes, parameters, ~SEQ, braces) into lines of words, which ``tree`` nests into keyword nodes; ``checks``
checks each keyword as keepalived does; ``translate`` turns the result into xlb's config tree and validates it;
``model`` holds what an import produces and reports. May import xlb.config, xlb.importers.iptables and xlb.errors.
"""
