"""The one module that talks to bcc: compile and load bpf/xlb.c, hand out its maps, attach and detach XDP.

bcc rewrites map calls (`services.lookup(...)`) only in the main source file, so our quoted headers are inlined
into one text here, with #line markers that keep compiler messages pointing at the real file and line.
"""
import ctypes as ct
import os
import re
import sys
from pathlib import Path

from . import kheaders, libbpf, loaderr, vethpeer
from ..errors import AttachError, KernelError
from .links import attached_prog, attached_prog_id
from .structs import BPF_DIR

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def import_bcc():
    try:
        import bcc
    except ImportError:
        # Debian's python3-bpfcc lives outside this interpreter's path when it is not Debian's python.
        sys.path.append("/usr/lib/python3/dist-packages")
        try:
            import bcc
        except ImportError as exc:
            raise KernelError("bcc is not installed: run `make setup` (Debian package python3-bpfcc)") from exc
    return bcc


def inline_source(path: Path, _seen=None) -> str:
    """The C source with its quoted includes inlined once each, in order, with #line markers."""
    seen = _seen if _seen is not None else set()
    out = [f'#line 1 "{path}"']
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        m = _INCLUDE.match(line)
        if not m:
            out.append(line)
            continue
        inc = (path.parent / m.group(1)).resolve()
        if inc not in seen:
            seen.add(inc)
            out.append(inline_source(inc, seen))
            out.append(f'#line {lineno + 1} "{path}"')
    return "\n".join(out)


def cflags_for(tables, pin_dir=None) -> list:
    """-D flags for the table sizes a config asks for (bpf/consts.h holds the defaults), and the directory to pin
    the maps in (bpf/maps.h XLB_MAP; none: unpinned)."""
    flags = [f"-DXLB_CONNS={tables.conns}", f"-DXLB_TEMPLATES={tables.templates}",
             f"-DXLB_HALF_OPEN={half_open_size(tables.conns)}",
             f"-DXLB_FLOW_CACHE={max(tables.flow_cache, 2)}", f"-DXLB_REPLY_CACHE={max(tables.flow_cache // 2, 2)}",
             f"-DXLB_NR_CPUS={possible_cpus()}"]
    if pin_dir is not None:
        flags.append(f'-DXLB_PIN_DIR="{pin_dir}"')
    return flags


def half_open_size(conns):
    """Entries of the half-open tables (bpf/halfopen.h) for a connection table of `conns`: a sixteenth, at least
    1024 (docs/reliability.md, SYN flood)."""
    return max(conns // 16, 1024)


def possible_cpus():
    """How many CPUs the kernel may ever bring up (per-CPU regions are sized for them): /sys's possible mask."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    last = 0
    for part in text.split(","):
        last = max(last, int(part.split("-")[-1]))
    return last + 1


class Program:
    """bpf/xlb.c compiled and loaded. `prog[name]` is a bcc table; `fd` the XDP program's fd. Subclasses load
    another program of bpf/ (SOURCE, FUNC, TAIL_CALLS) with the same attach and detach rules."""

    SOURCE = "xlb.c"
    FUNC = "xlb_xdp"
    # Programs reached by tail call, by their index in the `progs` map (bpf/maps.h).
    TAIL_CALLS = {0: "xlb_new_conn", 1: "xlb_icmp", 2: "xlb_new_local", 3: "xlb_sip_callid", 4: "xlb_new_fwd",
                  5: "xlb_promote"}

    def __init__(self, cflags=(), log=print):
        kheaders.ensure_kernel_headers(log=log)
        bcc = import_bcc()
        self._bcc = bcc
        src = inline_source(BPF_DIR / self.SOURCE)
        flags = [f"-I{BPF_DIR}", "-Wno-unused-function", *cflags]
        said = []
        try:
            with loaderr.captured_stderr(said):
                self.bpf = bcc.BPF(text=src.encode(), cflags=flags)
            self.func = self.bpf.load_func(self.FUNC.encode(), bcc.BPF.XDP)
            for idx, name in self.TAIL_CALLS.items():
                self.bpf[b"progs"][ct.c_int(idx)] = ct.c_int(self.bpf.load_func(name.encode(), bcc.BPF.XDP).fd)
        except Exception as exc:  # bcc raises bare Exception; its compiler output went to stderr
            why = loaderr.explain("".join(said))
            if why:
                raise KernelError(f"could not load bpf/{self.SOURCE}: {why}") from exc
            raise KernelError(f"could not load bpf/{self.SOURCE}: {exc} (compiler/verifier output above)") from exc
        self.fd = self.func.fd
        self._clock = None
        self.log = log
        self.links = {}  # ifname -> XDP mode flags: where this program is attached (xlb run --iface A --iface B)
        self.attached_id = None  # its id once attached (one program, the same id on every interface)

    @property
    def attached(self):
        """(ifname, flags) of the first interface the program is attached to, or None."""
        return next(iter(self.links.items()), None)

    @attached.setter
    def attached(self, value):
        """None: forget every attachment (nothing of ours to detach)."""
        self.links = dict([value]) if value else {}

    def __getitem__(self, name):
        return self.bpf[name.encode() if isinstance(name, str) else name]

    def clock_fd(self):
        """fd of the xlb_clock program (xlb/dataplane/clock.py), loaded on first use."""
        if self._clock is None:
            self._clock = self.bpf.load_func(b"xlb_clock", self._bcc.BPF.XDP)
        return self._clock.fd

    def attach(self, ifname, mode="native", force=False, own_map_ids=()):
        """Attach to ifname; refuse one that already has another XDP program unless force.

        A program that uses one of own_map_ids (our pinned maps: a previous xlb on this interface, alive or not)
        is replaced in one step, without force and without a moment with no program attached. Not across modes: the
        kernel keeps one program per mode, refuses two modes at once and replaces only within a mode, so with force
        a program in the other mode is taken off first (without force, ours there is refused: a mode change leaves
        the interface without a program for a moment, and an attach that then fails, without one at all).
        Native mode on a veth whose peer offloads checksums is warned about (xlb/dataplane/vethpeer.py)."""
        if mode == "native":
            vethpeer.warn_native_veth(ifname, self.log)
        current, current_mode = attached_prog(ifname)
        if current is not None:
            try:
                _name, ids = libbpf.prog_map_ids(current)
            except KernelError:
                ids = set()
            if force or ids & set(own_map_ids):
                if current_mode in (None, mode):
                    return self._replace(ifname, mode, current)
                if not force:
                    raise AttachError(f"{ifname} runs xlb's program in {current_mode} mode: start with --xdp-mode "
                                      f"{current_mode}, or add --force to move it to {mode} mode (the interface is "
                                      "without a program for a moment)")
                self._remove(ifname, XDP_MODES[current_mode])
                if self.log:
                    self.log(f"xlb: took XDP program {current} off {ifname} ({current_mode} mode) to attach in "
                             f"{mode} mode: the interface had no program for a moment")
        flags = XDP_MODES[mode]
        if not force:
            flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
        try:
            self._bcc.BPF.attach_xdp(ifname, self.func, flags)
        except Exception as exc:
            msg = str(exc)
            if "busy" in msg.lower() or "exists" in msg.lower():
                raise AttachError(f"{ifname} already has an XDP program attached; "
                                  "use --force to replace it") from exc
            if mode == "native" and ("not supported" in msg.lower() or "invalid" in msg.lower()):
                raise AttachError(f"{ifname}: native XDP refused ({msg}); try --xdp-mode generic") from exc
            raise AttachError(f"could not attach XDP to {ifname}: {msg}") from exc
        self.links[ifname] = XDP_MODES[mode]
        self.attached_id = attached_prog_id(ifname)

    def _replace(self, ifname, mode, old_id):
        import socket
        try:
            libbpf.xdp_replace(socket.if_nametoindex(ifname), self.fd, old_id, XDP_MODES[mode])
        except KernelError as exc:
            raise AttachError(f"could not replace the XDP program on {ifname}: {exc}") from exc
        self.links[ifname] = XDP_MODES[mode]
        self.attached_id = attached_prog_id(ifname)

    def release(self):
        """Let go of the program but leave it attached (its maps pinned): the next `xlb run` adopts both."""
        self.attached = None
        self.bpf.cleanup()

    def detach(self):
        """Detach from every interface where it is attached and still ours (another xlb may have replaced it with
        --force); safe twice. Returns whether it took a program off anywhere."""
        links, self.links = self.links, {}
        took = False
        for ifname, flags in links.items():
            if attached_prog_id(ifname) == self.attached_id:
                self._remove(ifname, flags)
                took = True
        return took

    def _remove(self, ifname, flags):
        try:
            self._bcc.BPF.remove_xdp(ifname, flags)
        except Exception as exc:
            raise AttachError(f"could not detach XDP from {ifname}: {exc}") from exc

    def close(self):
        """Detach (see detach(); returns whether it took the program off) and free the program."""
        try:
            return self.detach()
        finally:
            self.bpf.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _table_names(bcc, b):
    """Every map of a bcc module (bcc's Python side declares no signatures for these libbcc calls)."""
    lib = bcc.lib
    lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ct.c_size_t, [ct.c_void_p]
    lib.bpf_table_name.restype, lib.bpf_table_name.argtypes = ct.c_char_p, [ct.c_void_p, ct.c_size_t]
    return [lib.bpf_table_name(b.module, i).decode() for i in range(lib.bpf_num_tables(b.module))]


def relinked_build(live, cflags, map_names, funcs, log=None):
    """bpf/xlb.c compiled with cflags (e.g. the trace build): {function: instruction bytes} for funcs, in which every
    reference to a map named in map_names points at `live`'s same-named map (the variant reads and writes the live
    maps), and every other map of the build (private: the tail-call array, the handoff) stays the build's own.
    Returns (insns, own) where own is {name: fd} of those private maps, duplicated so they outlive the build (the
    caller closes them; a prog array loses its entries when its last fd closes). Pass small table sizes: the build's
    copies of the live maps are freed before this returns."""
    from .bpfsys import relink_maps
    kheaders.ensure_kernel_headers(log=log)
    bcc = import_bcc()
    src = inline_source(BPF_DIR / "xlb.c")
    flags = [f"-I{BPF_DIR}", "-Wno-unused-function", *cflags]
    try:
        b = bcc.BPF(text=src.encode(), cflags=flags)
    except Exception as exc:  # bcc raises bare Exception; its compiler output went to stderr
        raise KernelError(f"could not compile bpf/xlb.c with {' '.join(cflags)}: {exc}") from exc
    own = {}
    try:
        names = _table_names(bcc, b)
        fd_map = {}
        for name in names:
            fd = b[name.encode()].map_fd
            if name in map_names:
                fd_map[fd] = live[name].map_fd
            else:
                own[name] = os.dup(fd)
                fd_map[fd] = own[name]
        insns = {f: relink_maps(b.dump_func(f.encode()), fd_map) for f in funcs}
    except BaseException:
        for fd in own.values():
            os.close(fd)
        raise
    finally:
        b.cleanup()
    return insns, own

