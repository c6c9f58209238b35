"""SSL_GET: HTTP_GET over TLS. SNI (enable_sni) names the virtualhost; certificates are checked only when ``ca``
is given (the chain, not the name, as keepalived's verify does); ``certificate``/``key`` present a client
certificate."""
import ssl

from .http import HttpChecker


class SslChecker(HttpChecker):
    default_port = 443

    def __init__(self, check, real_weight=1):
        super().__init__(check, real_weight)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        if check.ca:
            ctx.load_verify_locations(check.ca)
        else:
            ctx.verify_mode = ssl.CERT_NONE
        if check.certificate:
            ctx.load_cert_chain(check.certificate, check.key)
        self.ctx = ctx
        hosts = [u.virtualhost for u in check.url if u.virtualhost] + [check.virtualhost]
        self.sni = next((h for h in hosts if h), None) if check.enable_sni else None

    def tls(self):
        return self.ctx, self.sni or ""


CHECKER = SslChecker
