"""FILE_CHECK: a number in a file (keepalived's track_file) sets the real's state: with ``weight 0`` any value
but 0 fails it; otherwise value x weight (negated with ``reverse``) is added to the real's configured weight, and
-254 or less fails it. keepalived watches the file with inotify; xlb reads it every delay_loop."""
from .checker import Checker
from .state import Result

WEIGHT_FAULT = -254


class FileChecker(Checker):
    def __init__(self, check, real_weight=1):
        super().__init__(check, real_weight)
        self.label = f"[{check.track_file}]"

    async def check(self):
        path = self.spec.track_file
        try:
            with open(path, "rb") as f:
                text = f.read(64).split()
            value = int(text[0]) if text else 0
        except (OSError, ValueError) as e:
            return Result(False, f"FILE_CHECK cannot read a number from {path}: {e}")
        w = self.spec.weight * (-1 if self.spec.reverse else 1)
        if not w:
            if value:
                return Result(False, f"FILE_CHECK {path} value {value} - setting down")
            return Result(True, f"FILE_CHECK {path} value 0 - setting up")
        if value * w <= WEIGHT_FAULT:
            return Result(False, f"FILE_CHECK {path} weight {value * w} - setting down")
        return Result(True, f"FILE_CHECK {path} weight {value * w}", weight=self.real_weight + value * w)


CHECKER = FileChecker
