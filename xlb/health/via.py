"""check_via_vip's rules on a health spec (xlb/health/spec.py): whose checks go via the VIP, and what a check's
destination needs (a VIP to go to, a port). A tun service's checks go in its tunnel, whatever its type and families
(bpf/hcencap.c writes every encapsulation the data plane does)."""


def via_vip(real, service):
    """check_via_vip: the real's, else the service's."""
    return bool(real.check_via_vip if real.check_via_vip is not None else service.check_via_vip)


def check_destination(r, c, real, svc):
    """What a check's destination needs; each problem fails on ``r`` (spec._Reader) with the check's place."""
    if c.kind in ("MISC_CHECK", "FILE_CHECK"):
        return
    if via_vip(real, svc) and not (svc.vip or c.connect_ip):
        r.fail(f"{c.where}.connect_ip", "check_via_vip on a fwmark service needs connect_ip: the VIP to check")
    if c.kind == "PING_CHECK":
        return
    if not (c.connect_port or real.port):
        r.fail(f"{c.where}.connect_port", f"{c.kind} needs connect_port: the real has no port (fwmark service)")

