"""SSL_GET: HTTP_GET over TLS. SNI (enable_sni) names the virtualhost; certificates are checked only when ``ca``
is given (the chain, not the name, as keepalived's verify does); ``certificate``/``key`` present a client
certificate. A file that cannot be loaded fails the check (with the reason) rather than the engine."""
import ssl

from .http import HttpChecker


class SslChecker(HttpChecker):
    default_port = 443
    begin = None          # a coroutine over a TLS stream (engine.py), not HTTP_GET's callbacks

    def __init__(self, check, real_weight=1):
        super().__init__(check, real_weight)
        self.ctx = None
        hosts = [u.virtualhost for u in check.url if u.virtualhost] + [check.virtualhost]
        self.sni = next((h for h in hosts if h), None) if check.enable_sni else None

    def context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        if self.spec.ca:
            ctx.load_verify_locations(self.spec.ca)
        else:
            ctx.verify_mode = ssl.CERT_NONE
        if self.spec.certificate:
            ctx.load_cert_chain(self.spec.certificate, self.spec.key)
        return ctx

    def tls(self):
        if self.ctx is None:
            self.ctx = self.context()     # an OSError here is this check's failure (engine.attempt)
        return self.ctx, self.sni or ""


CHECKER = SslChecker
