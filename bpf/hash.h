/* hash.h — the data plane's hashes: scheduling (sh, dh, mh, fallback) and the flow cache's slot. */
#ifndef XLB_HASH_H
#define XLB_HASH_H

#include <linux/types.h>

/* murmur3's 32-bit finalizer. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* A 32-bit mix of a 16-byte address: cheap and well spread. */
static __always_inline __u32 hash_addr(const __be32 *a)
{
	return mix32(a[0] ^ (a[1] * 0x9e3779b1) ^ (a[2] * 0x85ebca77) ^ (a[3] * 0xc2b2ae3d));
}

#endif
