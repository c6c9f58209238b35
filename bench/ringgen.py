"""The forwarding part's second generator, for kernels that refuse live frames (BPF_F_TEST_XDP_LIVE_FRAMES):
an AF_PACKET socket with a TX ring (TPACKET_V2, qdisc bypass) holding one frame per flow, all sent per pass.

The frames are built once per mix (bench/packets.py, checksums complete) for the same flows as xb_gen's: client
k % nclients, source port + k // nclients. A pass marks every slot for sending (one numpy store) and makes one
blocking send(), which returns once every frame has left (each slot is free again)."""
import ipaddress
import mmap
import socket
import struct

import numpy as np

from .packets import frame

SOL_PACKET, PACKET_VERSION, PACKET_TX_RING, PACKET_QDISC_BYPASS = 263, 10, 13, 20
TPACKET_V2 = 1
TP_STATUS_SEND_REQUEST = 1
FRAME_SIZE = 128   # a slot: struct tpacket2_hdr (32 bytes, aligned), then the frame
DATA_OFF = 32      # TPACKET2_HDRLEN - sizeof(struct sockaddr_ll): where a TX slot's frame starts
BLOCK_SIZE = 4096


class RingGen:
    """One socket bound to ifname in the calling thread's namespace; `load` a set of flows, then `send(passes)`."""

    def __init__(self, ifname, nslots):
        self.nslots = -(-nslots // (BLOCK_SIZE // FRAME_SIZE)) * (BLOCK_SIZE // FRAME_SIZE)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.bind((ifname, 0))
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            nblocks = self.nslots * FRAME_SIZE // BLOCK_SIZE
            self.sock.setsockopt(SOL_PACKET, PACKET_TX_RING,
                                 struct.pack("IIII", BLOCK_SIZE, nblocks, FRAME_SIZE, self.nslots))
            self.ring = mmap.mmap(self.sock.fileno(), self.nslots * FRAME_SIZE)
        except BaseException:
            self.sock.close()
            raise
        self.status = np.frombuffer(self.ring, dtype=np.uint32)[::FRAME_SIZE // 4]
        self.loaded = 0

    def load(self, src_base, dst, sport, dport, proto, flags, nflows, nclients, src_mac, dst_mac):
        """Write nflows frames (client k % nclients, port sport + k // nclients) into the first slots."""
        base = ipaddress.ip_address(src_base)
        if nflows > self.nslots:
            raise ValueError(f"{nflows} flows do not fit {self.nslots} slots")
        for k in range(nflows):
            data = frame(base + k % nclients, dst, sport + k // nclients, dport, proto, flags,
                         src_mac=src_mac, dst_mac=dst_mac)
            off = k * FRAME_SIZE
            struct.pack_into("II", self.ring, off + 4, len(data), len(data))  # tp_len, tp_snaplen
            self.ring[off + DATA_OFF:off + DATA_OFF + len(data)] = data
        self.loaded = nflows

    def send(self, passes):
        """Send every loaded frame `passes` times; returns the frames handed to the kernel."""
        for _ in range(passes):
            self.status[:self.loaded] = TP_STATUS_SEND_REQUEST
            self.sock.send(b"")
        return passes * self.loaded

    def close(self):
        self.status = None
        self.ring.close()
        self.sock.close()
