/* persist.h — persistence templates: <service identity, client & netmask> -> real, with LVS's timer rules. */
#ifndef XLB_PERSIST_H
#define XLB_PERSIST_H

#include "maps.h"
#include "parse.h"
#include "hash.h"

static __always_inline void persist_key_of(struct svc_key *svc, struct svc_meta *meta, struct pkt *p,
					   struct persist_key *pk)
{
	pk->svc = *svc;
#pragma unroll
	for (int i = 0; i < 4; i++)
		pk->client[i] = p->src[i] & meta->persist_mask[i];
}

/* placement = "consistent": the hash a new template's real is chosen by, from the template's key alone (the masked
 * client and the service key: the same on every balancer, unlike the unmasked address mh hashes), so balancers that
 * never talk place a client alike. xlb/tables/hashes.py placement_hash is the same function. */
static __always_inline __u32 placement_hash(struct persist_key *pk)
{
	struct svc_key *k = &pk->svc;
	__u32 svc = hash_addr(k->addr) ^ (k->mark * 0x85ebca77) ^
		    ((((__u32)k->port << 16) | ((__u32)k->proto << 8) | k->family) * 0xc2b2ae3d);
	return mix32(hash_addr(pk->client) ^ (mix32(svc) * 0x9e3779b1));
}

/* Is the template still in force? It is while its timer runs (persistence_timeout after the last new connection)
 * and, in lvs mode, while a connection it placed lives (held_until, kept by the control plane's sweep). */
static __always_inline int persist_valid(struct persist *t, struct svc_meta *meta, __u64 now)
{
	if ((__s64)(now - t->last_new_ns) < (__s64)meta->persist_timeout_ns)
		return 1;
	if (meta->flags & XLB_SVC_F_PERSIST_TIMEOUT)
		return 0;
	return (__s64)(t->held_until_ns - now) > 0;
}

/* Does the template's real still take this client? Removed and health-failed reals never do; quiescent ones do
 * unless the service expires quiescent templates. */
static __always_inline int persist_real_ok(struct persist *t, struct real *r, struct svc_meta *meta)
{
	if (!r || !(r->flags & XLB_REAL_F_LIVE) || r->gen != t->real_gen)
		return 0;
	if (r->flags & XLB_REAL_F_DOWN)  /* failed its health checks: its templates are void at once */
		return 0;
	if (!r->weight && (meta->flags & XLB_SVC_F_EXPIRE_QUIESCENT))
		return 0;
	return 1;
}

#endif
