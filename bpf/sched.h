/* sched.h — choosing a real for a new connection: one lookup into the service's precomputed slot table
 * (built by xlb/sched.py). Connection-count schedulers will add their own kinds here. */
#ifndef XLB_SCHED_H
#define XLB_SCHED_H

#include "maps.h"

/* A 32-bit mix of a 16-byte address (murmur3 finalizer over the folded words): cheap and well spread. */
static __always_inline __u32 hash_addr(const __be32 *a)
{
	__u32 h = a[0] ^ (a[1] * 0x9e3779b1) ^ (a[2] * 0x85ebca77) ^ (a[3] * 0xc2b2ae3d);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Returns a real id from the service's table, or 0 when the table is empty. */
static __always_inline __u32 pick_real(struct svc_meta *svc, struct pkt *p)
{
	__u32 len = svc->table_len;
	if (!len)
		return 0;
	__u32 idx;
	switch (svc->sched) {
	case XLB_SCHED_SH:
	case XLB_SCHED_MH:
		idx = hash_addr(p->src) % len;
		break;
	case XLB_SCHED_DH:
		idx = hash_addr(p->dst) % len;
		break;
	default: {
		__u32 id = svc->id;
		__u32 *pos = rr_pos.lookup(&id);
		if (!pos)
			return 0;
		idx = *pos;
		if (idx >= len)
			idx = 0;
		*pos = idx + 1;
	}
	}
	__u32 slot = svc->table_off + idx;
	__u32 *real_id = sched_slots.lookup(&slot);
	return real_id ? *real_id : 0;
}

#endif
