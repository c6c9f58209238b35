"""The data plane's C sources (xlb.c and one header per concern), shipped inside the xlb package as xlb.bpf.

setup.cfg maps the package xlb.bpf to this directory and ships its *.c and *.h as package data, so a wheel holds
them at xlb/bpf/ and an editable install resolves xlb.bpf here. xlb/structs.py finds them through the package
(importlib.resources), never through a path relative to the checkout. Nothing here is Python but this docstring.
"""
