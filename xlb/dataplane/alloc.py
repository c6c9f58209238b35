"""The control plane's bookkeeping of map space: regions of the sched_slots array, and small stable ids."""


class SlotAllocator:
    """First-fit allocator of regions in the sched_slots array."""

    def __init__(self, size):
        self.free = [(0, size)]  # sorted, non-adjacent (offset, length)

    def alloc(self, length):
        for i, (off, ln) in enumerate(self.free):
            if ln >= length:
                self.free[i:i + 1] = [(off + length, ln - length)] if ln > length else []
                return off
        return None

    def release(self, off, length):
        self.free.append((off, length))
        self.free.sort()
        merged = []
        for o, ln in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + ln)
            else:
                merged.append((o, ln))
        self.free = merged

    def available(self):
        return sum(ln for _, ln in self.free)

    def reserve(self, off, length):
        """Mark [off, off + length) as used (a region adopted from pinned maps)."""
        out = []
        for o, ln in self.free:
            end = o + ln
            if end <= off or o >= off + length:
                out.append((o, ln))
                continue
            if o < off:
                out.append((o, off - o))
            if end > off + length:
                out.append((off + length, end - off - length))
        self.free = out


class IdPool:
    """Stable small integer ids for identities; id 0 is never handed out."""

    def __init__(self, limit):
        self.limit = limit
        self.ids = {}
        self.free = []
        self.next = 1

    def get(self, ident):
        return self.ids.get(ident)

    def take(self, ident):
        """(ident's id, whether it was taken afresh)."""
        (i,), fresh = self.take_all((ident,))
        return i, bool(fresh)

    def take_all(self, idents):
        """take() of each identity in turn: (the ids in that order, the ids taken afresh). One dict operation each:
        hashing an identity of address objects is most of the cost (apply takes 110,000 ids for 10,000 services x
        10 reals, in one call)."""
        ids, fresh = [], []
        setdefault, free, nxt = self.ids.setdefault, self.free, self.next
        for ident in idents:
            candidate = free[-1] if free else nxt
            i = setdefault(ident, candidate)
            if i == candidate:
                fresh.append(i)
                if free:
                    free.pop()
                else:
                    nxt += 1
            ids.append(i)
        self.next = nxt
        return ids, fresh

    def drop(self, ident):
        self.free.append(self.ids.pop(ident))
