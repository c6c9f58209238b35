"""MISC_CHECK: run misc_path (argv, no shell) as ``user``; exit 0 passes, any other status, a signal or running
past misc_timeout fails. With misc_dynamic, 2..255 also pass and set the real's weight to status - 2."""
from . import commands
from .checker import Checker
from .state import Result


class MiscChecker(Checker):
    def __init__(self, check, real_weight=1):
        super().__init__(check, real_weight)
        self.script = check.misc_path[0]

    def deadline(self):
        return self.spec.misc_timeout + commands.TERM_GRACE + 5.0   # run() enforces misc_timeout itself

    def _say(self, what):
        return f"Misc check to [{self.spec.connect_ip}] for [{self.script}] {what}."

    async def check(self):
        out = await commands.run(self.spec.misc_path, self.spec.misc_timeout, self.spec.user)
        if out.error:
            return Result(False, self._say(f"failed (cannot run: {out.error})"))
        if out.timed_out:
            return Result(False, self._say("timed out"))
        if out.signal:
            return Result(False, self._say(f"failed (due to signal {out.signal})"))
        if out.status == 0:
            return Result(True, self._say("succeeded"))
        if self.spec.misc_dynamic and 2 <= out.status <= 255:
            return Result(True, self._say("succeeded"), weight=out.status - 2)
        return Result(False, self._say(f"failed (exited with status {out.status})"))


CHECKER = MiscChecker
