"""check_via_vip's rules on a health spec (xlb/health/spec.py): whose checks go via the VIP, and what a check's
destination needs (a VIP to go to, a port, a tunnel xlb can wrap checks in: bpf/hcencap.c)."""
import ipaddress


def via_vip(real, service):
    """check_via_vip: the real's, else the service's."""
    return bool(real.check_via_vip if real.check_via_vip is not None else service.check_via_vip)


def check_destination(r, c, real, svc):
    """What a check's destination needs; each problem fails on ``r`` (spec._Reader) with the check's place."""
    if c.kind in ("MISC_CHECK", "FILE_CHECK"):
        return
    if via_vip(real, svc) and not (svc.vip or c.connect_ip):
        r.fail(f"{c.where}.connect_ip", "check_via_vip on a fwmark service needs connect_ip: the VIP to check")
    if via_vip(real, svc) and svc.tunnel is not None:
        _check_via_tunnel(r, c, real, svc)
    if c.kind == "PING_CHECK":
        return
    if not (c.connect_port or real.port):
        r.fail(f"{c.where}.connect_port", f"{c.kind} needs connect_port: the real has no port (fwmark service)")


def _check_via_tunnel(r, c, real, svc):
    """check_via_vip wraps a tun real's checks in IPIP of the VIP's family (bpf/hcencap.c): nothing else yet."""
    if svc.tunnel.type != "ipip":
        r.fail(f"{c.where}", f"check_via_vip through a {svc.tunnel.type} tunnel is not supported by xlb "
                             "(tunnel_type \"ipip\" only)")
    vip = c.connect_ip or svc.vip
    if vip and ipaddress.ip_address(vip).version != ipaddress.ip_address(real.address).version:
        r.fail(f"{c.where}", f"check_via_vip wraps checks to {vip} only in a tunnel of the same family: real "
                             f"{real.address} is not")
