"""Other tools' configurations read into xlb's: keepalived.conf (``keepalived``: its reader, its own checks, the
translation) and iptables MARK rules (``iptables``). Pure: no bcc, no maps, no root; every problem names its file,
line and keyword. May import xlb.config, xlb.health's pure model and xlb.errors.
"""
