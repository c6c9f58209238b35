"""Running code inside a network namespace from this process: a function called there and its result (or
exception) brought back (run_in_netns, in_netns), or a long-lived child process there (NetnsProcess). Forks, so
the function needs no pickling; the child enters the namespace with setns before it runs.
"""
import contextlib
import multiprocessing
import pickle
import sys
import traceback

from pyroute2 import netns as _pnetns

from ..errors import KernelError

FORK = multiprocessing.get_context("fork")
_ready_conn = None  # set in a NetnsProcess child: the pipe on which notify_ready() reports


def enter_netns(ns):
    """Move the calling process into namespace `ns` (None: stay). flags=0: never create one by accident."""
    if ns is not None:
        _pnetns.setns(ns, flags=0)


class _RemoteError(Exception):
    """An exception from a child that could not be pickled; carries the child's traceback text."""


def pack_exception(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:
        blob = pickle.dumps(_RemoteError(f"{type(exc).__name__}: {exc}"))
    return blob, tb


def unpack_exception(blob, tb):
    exc = pickle.loads(blob)
    exc.__cause__ = _RemoteError("in the namespace child:\n" + tb)
    return exc


def _call_child(conn, ns, fn, args, kwargs):
    try:
        enter_netns(ns)
        result = fn(*args, **kwargs)
        conn.send(("ok", result))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        conn.send(("err",) + pack_exception(e))
    finally:
        conn.close()


@contextlib.contextmanager
def in_netns(ns):
    """Run the calling thread in namespace ns for the block (BPF_PROG_TEST_RUN resolves ingress_ifindex and
    bpf_fib_lookup looks up routes in the caller's namespace)."""
    _pnetns.pushns(ns)
    try:
        yield
    finally:
        _pnetns.popns()


def run_in_netns(ns, fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` in a forked child inside namespace `ns`; return its result or raise its error.

    The result and any exception must be picklable (an unpicklable exception arrives as a RuntimeError-like
    `_RemoteError` with the child's traceback). `ns=None` runs in the current namespace.
    """
    parent, child = FORK.Pipe(duplex=False)
    proc = FORK.Process(target=_call_child, args=(child, ns, fn, args, kwargs), daemon=True)
    proc.start()
    child.close()
    try:
        msg = parent.recv()
    except EOFError:
        proc.join()
        raise KernelError(f"child in netns {ns} died (exit code {proc.exitcode}) before answering") from None
    finally:
        parent.close()
    proc.join()
    if msg[0] == "ok":
        return msg[1]
    raise unpack_exception(msg[1], msg[2])


def notifies_ready(fn):
    """Mark `fn` as calling notify_ready() itself once it is serving; NetnsProcess.start() then waits for it."""
    fn.notifies_ready = True
    return fn


def notify_ready():
    """Tell the NetnsProcess parent that this child is ready (e.g. its sockets are listening). No-op elsewhere."""
    global _ready_conn
    if _ready_conn is not None:
        _ready_conn.send(("ready",))
        _ready_conn.close()
        _ready_conn = None


def _serve_child(conn, ns, fn, args, kwargs):
    global _ready_conn
    _ready_conn = conn
    try:
        enter_netns(ns)
        if not getattr(fn, "notifies_ready", False):
            notify_ready()
        fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001
        if _ready_conn is None:
            raise  # failed after it was ready: let multiprocessing print the traceback
        _ready_conn.send(("err",) + pack_exception(e))  # the parent re-raises it in start()
        sys.exit(1)


class NetnsProcess:
    """A long-running callable in a forked child inside a namespace (a server, a traffic generator).

    `start()` returns once the child is ready: at once after entering the namespace, or, for functions marked
    @notifies_ready, when they call notify_ready(); an error before that point is re-raised in the parent.
    `stop()` terminates (SIGTERM, then SIGKILL) and joins; safe to call twice. Usable as a context manager.
    """

    def __init__(self, ns, fn, *args, **kwargs):
        self.ns = ns
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.proc = None

    def start(self, timeout=10.0):
        if self.proc is not None:
            return self
        parent, child = FORK.Pipe(duplex=False)
        self.proc = FORK.Process(target=_serve_child, args=(child, self.ns, self.fn, self.args, self.kwargs),
                                  daemon=True)
        self.proc.start()
        child.close()
        try:
            if not parent.poll(timeout):
                self.stop()
                raise KernelError(f"{getattr(self.fn, '__name__', self.fn)} in netns {self.ns} "
                                  f"was not ready after {timeout}s")
            try:
                msg = parent.recv()
            except EOFError:
                self.stop()
                raise KernelError(f"{getattr(self.fn, '__name__', self.fn)} in netns {self.ns} exited "
                                  f"(code {self.proc.exitcode}) before it was ready") from None
        finally:
            parent.close()
        if msg[0] == "err":
            self.stop()
            raise unpack_exception(msg[1], msg[2])
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def is_alive(self):
        return self.proc is not None and self.proc.is_alive()

    def stop(self, timeout=5.0):
        proc = self.proc
        if proc is None or proc.pid is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
        proc.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class PipedChild:
    """A forked child `target(conn, *args)` that talks over a duplex pipe: the parent sends requests with
    `_conn.send` and reads answers; `close()` sends None (the child's sign to finish), joins, kills it if it
    lingers; idempotent. Usable as a context manager (the tests' LineConnection, the labs' LineFleet)."""

    def __init__(self, target, *args):
        self._conn, child = FORK.Pipe(duplex=True)
        self._proc = FORK.Process(target=target, args=(child, *args), daemon=True)
        self._proc.start()
        child.close()

    def close(self):
        if self._proc is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
