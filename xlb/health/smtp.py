"""SMTP_CHECK: connect, expect the 220 greeting, say ``HELO helo_name`` (default smtpchecker.keepalived.org),
expect 250, then QUIT."""
from .checker import Checker, Failed
from .state import Result


async def reply_code(reader):
    """The code of one (possibly multi-line: ``250-...``) SMTP reply; 0 when the server hangs up."""
    while True:
        line = await reader.readline()
        if len(line) < 4 or not line[:3].isdigit():
            return 0
        if line[3:4] != b"-":
            return int(line[:3])


class SmtpChecker(Checker):
    def timed_out(self):
        return Result(False, f"Timeout connecting SMTP server {self.label}.")

    async def check(self):
        error = f"SMTP connection ERROR to {self.label}."
        try:
            reader, writer = await self.open_stream()
        except OSError:
            return Result(False, error)

        async def steps():
            code = await reply_code(reader)
            if code != 220:
                raise Failed(f"Bad greeting from SMTP server {self.label}. SMTP status code = {code}")
            writer.write(f"HELO {self.spec.helo_name}\r\n".encode())
            code = await reply_code(reader)
            if code != 250:
                raise Failed(f"Error processing HELO cmd on SMTP server {self.label}. SMTP status code = {code}")
            writer.write(b"QUIT\r\n")
            await writer.drain()
        return await self.exchange(steps, writer.close, error, f"SMTP connection to {self.label} success.")


CHECKER = SmtpChecker
