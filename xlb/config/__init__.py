"""xlb's configuration: the frozen model (``model``: Config, Service, Real, MarkRule; loading, parsing and
validation of the TOML file with every error naming its file, line and field), where each TOML field sits
(``tomlpos``), and the real-server addresses that can never work (``realcheck``). Pure: no bcc, no maps, no root.
May import xlb.errors only.
"""
