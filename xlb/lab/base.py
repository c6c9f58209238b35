"""What every multi-namespace lab (ecmp.py, syncpair.py) does on entering and leaving: build it all or remove what
was built, and on exit stop its processes, remove its namespaces and, whatever failed before, the pins its
daemons left (an `xlb run` keeps its maps pinned across SIGTERM by design)."""
from ..dataplane.pin import remove as remove_pins


class Lab:
    """A context manager over `_build()` (the namespaces, links and processes) and `_stop()` (the processes);
    `topo` is its xlb.lab.netns.Topology, `pin_roots` the pin directories to remove, `_cleanup()` what else goes."""
    topo = None
    pin_roots = ()

    def _build(self):
        raise NotImplementedError

    def _stop(self):
        pass

    def _cleanup(self):
        pass

    def __enter__(self):
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self._stop()
            self.topo.close()
        finally:
            for root in self.pin_roots:
                remove_pins(root)
            self._cleanup()
