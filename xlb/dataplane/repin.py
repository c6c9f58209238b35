"""Pins that vanish under a running daemon: the BPF filesystem unmounted, or the pin directory removed by hand.

The daemon holds every map and its program by descriptor, so forwarding goes on; but a restart would find nothing
to adopt and start empty, and a second daemon could take the directory. Each sweep `PinWatch.check()` looks for the
pins the start made and, when they are gone, pins the same maps again (mounting /sys/fs/bpf again in the machine's
own mount namespace, as the start does), writes the layout record and takes the directory's lock anew. When that
cannot be done it says so once, with what a restart would lose.
"""
import os
from pathlib import Path

from . import bpffs, layout, libbpf, pin
from ..errors import KernelError


class PinWatch:
    def __init__(self, prog, pin_dir, tail_calls, lock, log):
        self.prog, self.pin_dir, self.tail_calls, self.lock, self.log = prog, Path(pin_dir), tail_calls, lock, log
        self.names = pin.pinned_maps(self.pin_dir)  # what the start pinned
        self.failing = None  # the last failure said (said once)

    def missing(self):
        d = self.pin_dir
        gone = [n for n in [*self.names, pin.LAYOUT_MAP] if not (d / n).exists()]
        if self.tail_calls is not None and not self.tail_calls.exists():
            gone.append(self.tail_calls.name)
        return gone

    def _locked(self):
        """Is the directory there the one our lock holds?"""
        here, held = self.pin_dir.stat(), os.fstat(self.lock.fd)
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def check(self):
        """Pin again what vanished; returns the names pinned again ([] when everything was in place)."""
        gone = self.missing()
        if not gone:
            self.failing = None
            return []
        shown = bpffs.shown(self.pin_dir)
        try:
            if bpffs.outer_process() is None:
                bpffs.mount_bpffs()
            self.pin_dir.mkdir(parents=True, exist_ok=True)
            lock = self.lock if self._locked() else pin.DirLock(self.pin_dir).acquire()
            for name in gone:
                if name == pin.LAYOUT_MAP:
                    layout.write_layout(self.pin_dir)
                elif self.tail_calls is not None and name == self.tail_calls.name:
                    libbpf.obj_pin(self.prog["progs"].map_fd, self.tail_calls)
                else:
                    libbpf.obj_pin(self.prog[name].map_fd, self.pin_dir / name)
        except (OSError, KernelError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            if why != self.failing:
                self.log(f"xlb: error: the maps pinned in {shown} are gone ({len(gone)} pins) and cannot be pinned "
                         f"again: {why}; forwarding goes on, but a restart would start with empty tables (mount "
                         "the BPF filesystem again)")
                self.failing = why
            return []
        if lock is not self.lock:  # the old lock holds a directory that is gone
            self.lock.release()
            self.lock = lock
        self.failing = None
        self.log(f"xlb: warning: {len(gone)} pins in {shown} were gone (the BPF filesystem unmounted, or removed by "
                 "hand): pinned the running maps again, a restart adopts them")
        return gone
