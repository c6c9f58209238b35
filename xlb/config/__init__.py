"""xlb's configuration: the frozen model (``model``: Config, Service, Real, MarkRule and the values they may take),
reading and validating the TOML file with every error naming its file, line and field (``read``), where each TOML
field sits (``tomlpos``), the real-server addresses that can never work (``realcheck``), and the config written
back as TOML (``dump``); a service's health keys become xlb.health's spec (``health``). Pure: no bcc, no maps,
no root. May import xlb.health's spec and xlb.errors only.
"""
