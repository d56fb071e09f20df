/* dynscreen: XDP screening of mail clients, and the socket tracepoint that
 * counts their connections. BCC C; compiled by control/dataplane/loader.py.
 *
 * Hot path, cheapest first: screened-port check (an inlined array bitmap),
 * then the block filter (an inlined array bitmap: a source never blocked skips the
 * next step), the per-CPU blocked-source cache (a source dropped before on this CPU skips
 * the next step), the block table (one hash lookup), and only for a new connection
 * (SYN) the per-source rate/concurrency state. The clock is read only when
 * an entry is found; the whitelist only when about to block, or on a hit of
 * an IPv6 prefix block. See bpf/README.md.
 *
 * Build-time macros (from the loader): DS_MAX_BLOCKS, DS_MAX_TRACKED,
 * DS_FILTER_BITS, DS_MAX_LISTS, DS_PIN (pin folder; maps are created or adopted there),
 * DS_WITH_TRACEPOINT, DS_WITH_SOCKOPS (handshakes counted by ds_handshake, sock_ops).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include "dynscreen.h"

#ifndef DS_MAX_BLOCKS
#define DS_MAX_BLOCKS 1000000
#endif
#ifndef DS_MAX_TRACKED
#define DS_MAX_TRACKED 1000000
#endif
#ifndef DS_MAX_LISTS
#define DS_MAX_LISTS 65536
#endif
/* log2 of the block filter's bits (the loader sizes it to the block table). */
#ifndef DS_FILTER_BITS
#define DS_FILTER_BITS 24
#endif
#define DS_FILTER_WORDS (1U << (DS_FILTER_BITS - 6))
/* The IPv6 prefix (the loader's ipv6_prefix, fixed per load): XDP masks a source with
 * constants, where reading the config's v6mask costs four loads a packet. */
#ifdef DS_IPV6_PREFIX
#define DS_V6_WORD_MASK(i)                                                                  \
    (DS_IPV6_PREFIX >= 32 * ((i) + 1) ? 0xffffffffU                                         \
     : DS_IPV6_PREFIX <= 32 * (i)     ? 0U                                                  \
                                      : bpf_htonl(~0U << (32 - (DS_IPV6_PREFIX - 32 * (i)))))
#define DS_V6_MASK(cfg, i) DS_V6_WORD_MASK(i)
#else
#define DS_V6_MASK(cfg, i) ((cfg)->v6mask[i])
#endif

#define NS_PER_SEC 1000000000ULL
#define DS_MAX_EXT_HEADERS 8
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
#define TCP_ESTABLISHED_ 1
#define AF_INET_ 2
#define AF_INET6_ 10

#ifdef DS_PIN
#define DS_MAP(type, k, v, name, max, flags) \
    BPF_TABLE_PINNED(type, k, v, name, max, DS_PIN "/" #name, flags)
#else
#define DS_MAP(type, k, v, name, max, flags) BPF_F_TABLE(type, k, v, name, max, flags)
#endif

/* Screened destination ports: bit (port & 63) of word (port >> 6). */
DS_MAP("array", u32, u64, ports, 1024, 0);
DS_MAP("array", u32, struct ds_config, config, 1, 0);
/* Control-plane heartbeat (CLOCK_MONOTONIC ns), stamped every second. */
DS_MAP("array", u32, u64, heartbeat, 1, 0);
DS_MAP("percpu_array", u32, u64, counters, DS_NCOUNTERS, 0);
/* The block table: a plain hash (never an LRU that forgets blocks). */
DS_MAP("hash", struct ds_key, struct ds_block, blocks, DS_MAX_BLOCKS, BPF_F_NO_PREALLOC);
/* Hand-made CIDR blocks; looked up only while config.cidr_blocks > 0. */
DS_MAP("lpm_trie", struct ds_lpm_key, struct ds_block, cidr_blocks, DS_MAX_LISTS, BPF_F_NO_PREALLOC);
/* Never screened: IPv4 (as ::ffff:0:0/96 + n) and IPv6 ranges. */
DS_MAP("lpm_trie", struct ds_lpm_key, u32, whitelist, DS_MAX_LISTS, BPF_F_NO_PREALLOC);
/* Sources exempt from rate/concurrency blocks (SMTP AUTH success): expiry ns. */
DS_MAP("hash", struct ds_key, u64, exempt, DS_MAX_LISTS, BPF_F_NO_PREALLOC);
/* Per-source rate, SYN-cap and established state. */
DS_MAP("lru_hash", struct ds_key, struct ds_track, track, DS_MAX_TRACKED, 0);
/* Local addresses whose server sockets the tracepoint counts. */
DS_MAP("hash", struct ds_key, u32, local_addrs, 4096, BPF_F_NO_PREALLOC);
/* The block filter (see dynscreen.h): words [0, DS_FILTER_WORDS) are the control plane's,
 * the rest the kernel's. Not pinned: each load builds its own from the table (arm_filter). */
BPF_ARRAY(block_filter, u64, 2 * DS_FILTER_WORDS);
/* The blocked-source cache (see dynscreen.h): per load, never pinned. */
BPF_PERCPU_ARRAY(bcache, struct ds_bcache, DS_BCACHE_SLOTS);
/* Kernel-made blocks for the daemon: 2048 pages (8 MiB) hold ~174,000 48-byte records,
 * a flood of 100,000 sources blocked within a minute even if the daemon read nothing in
 * that minute. A record that does not fit is counted in events_lost. */
#ifndef DS_RING_PAGES
#define DS_RING_PAGES 2048
#endif
BPF_RINGBUF_OUTPUT(events, DS_RING_PAGES);

static __always_inline void count(u32 idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;
}

static __always_inline int is_mapped(const struct ds_key *k)
{
    return k->addr[0] == 0 && k->addr[1] == 0 && k->addr[2] == bpf_htonl(0xffff);
}

static __always_inline int whitelisted(const struct ds_key *full)
{
    struct ds_lpm_key lk = {.prefixlen = 128};
    __builtin_memcpy(lk.addr, full->addr, sizeof(lk.addr));
    return whitelist.lookup(&lk) != NULL;
}

/* Whether the block table may hold the key: false only when neither half of the filter
 * has its bit (then it certainly does not). Two inlined array loads, no call. */
static __always_inline int maybe_blocked(u32 slot)
{
    u32 w = slot >> 6;
    u64 bit = 1ULL << (slot & 63);
    u64 *p = block_filter.lookup(&w);
    if (!p || (*p & bit))
        return 1;
    w += DS_FILTER_WORDS;
    u64 *k = block_filter.lookup(&w);
    return !k || (*k & bit);
}

static __always_inline int same_key(const __u32 a[4], const struct ds_key *k)
{
    return ((a[0] ^ k->addr[0]) | (a[1] ^ k->addr[1]) | (a[2] ^ k->addr[2]) |
            (a[3] ^ k->addr[3])) == 0;
}

/* Hand a cache entry's pending drops to the block they were counted on: b, its source's
 * entry now (NULL: none), if it is still that block (the same expiry; a block removed and
 * made again starts from its own drops). */
static __always_inline void bcache_hand_over(struct ds_bcache *c, struct ds_block *b)
{
    if (b && b->expires == c->expires)
        b->drops += c->drops;
    c->drops = 0;
}

/* The entry's own block now: its source's table entry, or for a range entry the range the
 * trie matches for its address (the longest, as the drop path asks). */
static __always_inline struct ds_block *bcache_block(struct ds_bcache *c)
{
    if (!c->plen)
        return blocks.lookup((struct ds_key *)c->addr);
    struct ds_lpm_key lk = {.prefixlen = c->plen};
    __builtin_memcpy(lk.addr, c->addr, 16);
    return cidr_blocks.lookup(&lk);
}

static __always_inline void bcache_flush(struct ds_bcache *c)
{
    bcache_hand_over(c, bcache_block(c));
}

/* Remember a standing block found in the table (b, the key's entry; plen 0) or in the
 * trie (b, the range's entry; key, the full address; plen 128: the trie's longest match),
 * made under gen; the slot's previous entry first hands over its pending drops. */
static __always_inline void bcache_fill(struct ds_bcache *c, const struct ds_key *key,
                                        struct ds_block *b, u64 gen, u32 plen)
{
    if (c->drops) {
        if (c->plen == plen && same_key(c->addr, key))
            bcache_hand_over(c, b);
        else
            bcache_flush(c);
    }
    __builtin_memcpy(c->addr, key->addr, sizeof(c->addr));
    c->expires = b->expires;
    c->gen = gen;
    c->plen = plen;
}

/* A block the kernel makes: its filter bit first (the kernel's half), then the entry. */
static __always_inline void filter_add(const struct ds_key *key)
{
    u32 slot = ds_filter_slot(key->addr, DS_FILTER_BITS);
    u32 w = (slot >> 6) + DS_FILTER_WORDS;
    u64 *k = block_filter.lookup(&w);
    if (k)
        __sync_fetch_and_or(k, 1ULL << (slot & 63));
}

/* CLOCK_MONOTONIC ns, to a tick, for XDP. bpf_jiffies64 is inlined by the verifier into
 * one load, where bpf_ktime_get_coarse_ns is a helper call (about 15 ns here, a third of
 * a blocked drop); jiffies advance with CLOCK_MONOTONIC (the tick derives them from it),
 * so the loader's calibration holds for the whole boot. Both read the time of the last
 * tick: never ahead of the fine clock, behind it by less than a tick. */
static __always_inline u64 mono_now(const struct ds_config *cfg)
{
    if (cfg->jiffy_ns)
        return bpf_jiffies64() * cfg->jiffy_ns + cfg->jiffies_base_ns;
    return bpf_ktime_get_coarse_ns();
}

/* The control plane's heartbeat is older than the timeout. The coarse clock
 * lags the fine one Python stamps with: a stamp "from the future" is fresh. */
static __always_inline int stale(u64 now, const struct ds_config *cfg)
{
    u32 zero = 0;
    u64 *hb = heartbeat.lookup(&zero);
    if (!hb)
        return 1;
    return (s64)(now - *hb) > (s64)cfg->heartbeat_timeout_ns;
}

/* The source is whitelisted or exempt: never SYN-capped, never blocked by a limit. */
static __always_inline int spared(const struct ds_key *key, const struct ds_key *full, u64 now)
{
    if (whitelisted(full))
        return 1;
    u64 *ex = exempt.lookup((struct ds_key *)key);
    return ex && *ex > now;
}

/* Rate estimate over a sliding window from two fixed windows: the previous
 * window's count weighted by how much of it still overlaps. */
static __always_inline u64 rate_estimate(const struct ds_track *t, u64 now, u64 w)
{
    u64 e = now - t->win_start;
    if (now < t->win_start || w == 0)
        return t->cur;
    if (e >= 2 * w)
        return 0;
    if (e >= w)
        return (u64)t->cur * (2 * w - e) / w;
    return (u64)t->prev * (w - e) / w + t->cur;
}

/* Make a kernel block unless the source is whitelisted or exempt.
 * Returns 1 when a block now stands (the caller drops), else 0. */
static __always_inline int make_block(const struct ds_key *key, const struct ds_key *full,
                                      struct ds_config *cfg, struct ds_track *t, u64 now,
                                      u32 reason, u32 cnt, u32 evflags)
{
    if (spared(key, full, now)) {
        count(DS_C_EXEMPT_PASS);
        return 0;
    }
    struct ds_block b = {};
    b.expires = now + cfg->block_ns;
    b.reason = reason;
    b.origin = DS_ORIGIN_KERNEL;
    b.drops = 1;
    struct ds_event ev = {};
    __builtin_memcpy(ev.addr, key->addr, sizeof(ev.addr));
    ev.reason = reason;
    ev.count = cnt;
    ev.flags = evflags;
    if (cfg->flags & DS_F_MONITOR)
        ev.flags |= DS_EV_MONITOR;
    int made = 0;
    filter_add(key);
    if (blocks.update((struct ds_key *)key, &b) == 0) {
        count(DS_C_BLOCKS_MADE);
        ev.expires = b.expires;
        made = 1;
        /* A new block starts the source afresh. */
        if (t) {
            t->cur = 0;
            t->prev = 0;
            t->syn = 0;
            t->win_start = now;
        }
    } else {
        count(DS_C_TABLE_FULL);
        ev.flags |= DS_EV_TABLE_FULL;
    }
    if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0)
        count(DS_C_EVENTS_LOST);
    return made;
}

static __always_inline int verdict_blocked(struct ds_config *cfg, int syn)
{
    if (cfg->flags & DS_F_MONITOR) {
        count(DS_C_MONITOR_PASS);
        return XDP_PASS;
    }
    count(syn ? DS_C_DROP_BLOCKED : DS_C_DROP_SESSION);
    return XDP_DROP;
}

#define DS_CLEAR 0    /* no block stands against the source */
#define DS_BLOCKED 1  /* a block stands: its drops are counted, the caller drops */
#define DS_SPARED 2   /* whitelisted inside a blocked prefix or range: passes */

/* Whether a block stands against a source: its hash entry (looked up only when the
 * armed filter does not rule it out, and not at all while this CPU's blocked-source cache
 * holds it), else (while any exist) the CIDR trie. The clock is read only when an entry is found; the whitelist is asked only
 * on a hit where a whitelisted address may lie inside the block (an IPv6 prefix, while
 * the whitelist holds IPv6 entries, or a range). The drops statistic is a plain add, not
 * an atomic one: a locked add on an entry that every CPU's drops write costs more than
 * the rare lost count of two CPUs dropping the same source at the same instant. */
static __always_inline int standing(struct ds_config *cfg, struct ds_key *key,
                                    const struct ds_key *full, int v6, u64 *now)
{
    struct ds_block *b = NULL;
    struct ds_bcache *c = NULL;
    u32 ci = 0; /* the source's cache slot (while the filter is armed) */
    /* Read before the table: an entry made from what the lookup finds is stamped with the
     * generation that preceded it, so a change made meanwhile invalidates it. */
    u64 gen = *(volatile u64 *)&cfg->block_gen;
    if (!(cfg->flags & DS_F_FILTER)) {
        b = blocks.lookup(key);
    } else {
        u32 slot = ds_filter_slot(key->addr, DS_FILTER_BITS);
        ci = slot & (DS_BCACHE_SLOTS - 1);
        /* A source inside a range has no table entry: its bit is set (the kernel's half)
         * when its range entry is cached, so a clear bit still skips the probe. */
        if (maybe_blocked(slot)) {
            c = bcache.lookup(&ci);
            if (c && gen && c->gen == gen &&
                (c->plen ? same_key(c->addr, full) : same_key(c->addr, key))) {
                *now = mono_now(cfg);
                if (c->expires > *now) {
                    /* A range entry asks the whitelist on every hit, as the trie's path. */
                    if ((c->plen || (v6 && (cfg->flags & DS_F_WHITELIST_V6))) &&
                        whitelisted(full))
                        return DS_SPARED;
                    if (++c->drops >= DS_BCACHE_FLUSH)
                        bcache_flush(c);
                    return DS_BLOCKED;
                }
            }
            b = blocks.lookup(key);
        }
    }
    if (b) {
        *now = mono_now(cfg);
        if (b->expires > *now) {
            if (v6 && (cfg->flags & DS_F_WHITELIST_V6) && whitelisted(full))
                return DS_SPARED;
            b->drops += 1;
            if (c && gen)
                bcache_fill(c, key, b, gen, 0);
            return DS_BLOCKED;
        }
    }
    if (cfg->cidr_blocks) {
        struct ds_lpm_key lk = {.prefixlen = 128};
        __builtin_memcpy(lk.addr, full->addr, 16);
        struct ds_block *cb = cidr_blocks.lookup(&lk);
        if (cb) {
            if (!*now)
                *now = mono_now(cfg);
            if (cb->expires > *now) {
                if (whitelisted(full))
                    return DS_SPARED;
                cb->drops += 1;
                if (gen && (cfg->flags & DS_F_FILTER)) {
                    if (!c)
                        c = bcache.lookup(&ci);
                    if (c) {
                        filter_add(key); /* a false "maybe" for the table: a lookup's cost */
                        bcache_fill(c, full, cb, gen, 128);
                    }
                }
                return DS_BLOCKED;
            }
        }
    }
    return DS_CLEAR;
}

int xdp_screen(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_PASS; /* runt frame: not ours */
    u16 proto = eth->h_proto;
    void *cur = eth + 1;

#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
            break;
        if (cur + 4 > data_end)
            goto malformed;
        proto = *(u16 *)(cur + 2);
        cur += 4;
    }

    struct ds_key full = {};
    struct tcphdr *tcp;
    int v6 = 0;
    /* What an unscreenable packet (no TCP header to read) passes as, when its source
     * is not blocked. */
    u32 unscreened = DS_C_FRAGMENT;
    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = cur;
        if ((void *)(ip + 1) > data_end)
            goto malformed;
        if (ip->protocol != IPPROTO_TCP)
            return XDP_PASS;
        u32 ihl = ip->ihl * 4;
        if (ihl < sizeof(*ip))
            goto malformed;
        full.addr[2] = bpf_htonl(0xffff);
        full.addr[3] = ip->saddr;
        if (ip->frag_off & bpf_htons(0x1fff))
            goto unscreenable; /* non-first fragment: no TCP header */
        tcp = cur + ihl;
        if ((void *)(tcp + 1) > data_end) {
            if (ip->frag_off & bpf_htons(0x2000))
                goto unscreenable; /* a first fragment too short for the TCP header */
            goto malformed;
        }
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = cur;
        if ((void *)(ip6 + 1) > data_end)
            goto malformed;
        __builtin_memcpy(full.addr, ip6->saddr.in6_u.u6_addr32, 16);
        v6 = 1;
        u8 nh = ip6->nexthdr;
        void *p = ip6 + 1;
        int first_frag = 0;
#pragma unroll
        for (int i = 0; i < DS_MAX_EXT_HEADERS; i++) {
            if (nh == IPPROTO_TCP)
                break;
            if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST) {
                u8 *h = p;
                if ((void *)(h + 2) > data_end)
                    goto malformed;
                nh = h[0];
                p += ((u32)h[1] + 1) * 8;
            } else if (nh == NEXTHDR_FRAGMENT) {
                u8 *h = p;
                if ((void *)(h + 8) > data_end)
                    goto malformed;
                if (*(u16 *)(h + 2) & bpf_htons(0xfff8))
                    goto unscreenable; /* non-first fragment */
                first_frag = *(u16 *)(h + 2) & bpf_htons(1); /* M set: more follow */
                nh = h[0];
                p += 8;
            } else {
                return XDP_PASS; /* not TCP (or an extension we do not walk) */
            }
        }
        if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST ||
            nh == NEXTHDR_FRAGMENT) {
            unscreened = DS_C_PARSE_FAIL; /* a longer chain than we walk */
            goto unscreenable;
        }
        if (nh != IPPROTO_TCP)
            return XDP_PASS;
        tcp = p;
        if ((void *)(tcp + 1) > data_end) {
            if (first_frag)
                goto unscreenable;
            goto malformed;
        }
    } else {
        return XDP_PASS;
    }

    u32 dport = bpf_ntohs(tcp->dest);
    u32 word = dport >> 6;
    u64 *bits = ports.lookup(&word);
    if (!bits || !(*bits & (1ULL << (dport & 63))))
        return XDP_PASS;

    u32 zero = 0;
    struct ds_config *cfg = config.lookup(&zero);
    if (!cfg || !(cfg->flags & DS_F_ENABLED))
        return XDP_PASS;
    int syn = tcp->syn && !tcp->ack;
    if (!syn && !(cfg->flags & DS_F_CLOSE_SESSION)) {
        count(DS_C_PASSED);
        return XDP_PASS;
    }

    struct ds_key key = full;
    if (v6) {
        if (is_mapped(&full)) {
            v6 = 0; /* IPv4-mapped IPv6 counts as the IPv4 address */
        } else {
            key.addr[0] &= DS_V6_MASK(cfg, 0);
            key.addr[1] &= DS_V6_MASK(cfg, 1);
            key.addr[2] &= DS_V6_MASK(cfg, 2);
            key.addr[3] &= DS_V6_MASK(cfg, 3);
        }
    }

    u64 now = 0;
    int st = standing(cfg, &key, &full, v6, &now);
    if (st == DS_BLOCKED)
        return verdict_blocked(cfg, syn);
    if (st == DS_SPARED) {
        count(DS_C_WHITELIST_PASS);
        return XDP_PASS;
    }
    if (!syn) {
        count(DS_C_PASSED);
        return XDP_PASS;
    }

    /* A new connection from a source that is not blocked. */
    if (!now)
        now = mono_now(cfg);
    struct ds_track *t = track.lookup(&key);
    if (!t) {
        /* Insert, never overwrite: the tracepoint may have made the entry meanwhile, and
         * replacing it would lose the handshake it just counted. */
        struct ds_track nt = {};
        nt.win_start = now;
        nt.syn_start = now;
        nt.syn = 1;
        if (track.insert(&key, &nt) != 0 && !track.lookup(&key))
            count(DS_C_TRACK_FAIL);
        count(DS_C_PASSED);
        return XDP_PASS;
    }
    if ((s64)(now - t->syn_start) >= (s64)NS_PER_SEC) {
        t->syn_start = now;
        t->syn = 1;
    } else {
        t->syn += 1;
    }
    /* Over the cap: a whitelisted or exempt source is never capped. The whitelist and the
     * exemption are asked once per source and second (the answer kept in t->syn), so a
     * flood of spoofed SYNs costs a lookup of each a second, not one per SYN; except for
     * an IPv6 prefix while the whitelist holds IPv6 entries, where addresses inside one
     * prefix may get different answers: each SYN over the cap asks. */
    if (cfg->syn_per_sec && (t->syn & DS_SYN_COUNT) > cfg->syn_per_sec) {
        int ok;
        if (v6 && (cfg->flags & DS_F_WHITELIST_V6)) {
            ok = spared(&key, &full, now);
        } else {
            if (!(t->syn & DS_SYN_ASKED))
                t->syn |= DS_SYN_ASKED | (spared(&key, &full, now) ? DS_SYN_SPARED : 0);
            ok = t->syn & DS_SYN_SPARED;
        }
        if (ok) {
            count(DS_C_EXEMPT_PASS);
        } else {
            if (cfg->flags & DS_F_MONITOR) {
                count(DS_C_MONITOR_PASS);
                return XDP_PASS;
            }
            count(DS_C_DROP_SYN_CAP);
            return XDP_DROP;
        }
    }
    if (cfg->heartbeat_timeout_ns && stale(now, cfg)) {
        count(DS_C_PAUSED);
        count(DS_C_PASSED);
        return XDP_PASS;
    }
    /* The estimate never exceeds cur + prev: skip its division below the limit. */
    if (cfg->conn_limit && (u64)t->cur + t->prev >= cfg->conn_limit) {
        u64 est = rate_estimate(t, now, cfg->conn_window_ns);
        if (est >= cfg->conn_limit &&
            make_block(&key, &full, cfg, t, now, DS_REASON_CONNECTIONS, (u32)est + 1, 0)) {
            if (cfg->flags & DS_F_MONITOR) {
                count(DS_C_MONITOR_PASS);
                return XDP_PASS;
            }
            count(DS_C_DROP_RATE);
            return XDP_DROP;
        }
    }
    if (cfg->simul_limit && t->established >= (s32)cfg->simul_limit) {
        if (make_block(&key, &full, cfg, t, now, DS_REASON_SIMULTANEOUS,
                       (u32)t->established + 1, 0)) {
            if (cfg->flags & DS_F_MONITOR) {
                count(DS_C_MONITOR_PASS);
                return XDP_PASS;
            }
            count(DS_C_DROP_SIMUL);
            return XDP_DROP;
        }
    }
    count(DS_C_PASSED);
    return XDP_PASS;

unscreenable:
    /* A fragment without a TCP header, or an IPv6 header chain longer than we walk: no
     * port to check, and the kernel reassembles or walks it into a TCP segment. A blocked
     * source's is dropped (whatever the port); anyone else's passes. */
    {
        u32 z = 0;
        struct ds_config *c = config.lookup(&z);
        if (!c || !(c->flags & DS_F_ENABLED))
            return XDP_PASS;
        struct ds_key k = full;
        if (v6) {
            if (is_mapped(&full)) {
                v6 = 0;
            } else {
                k.addr[0] &= DS_V6_MASK(c, 0);
                k.addr[1] &= DS_V6_MASK(c, 1);
                k.addr[2] &= DS_V6_MASK(c, 2);
                k.addr[3] &= DS_V6_MASK(c, 3);
            }
        }
        u64 t0 = 0;
        int s = standing(c, &k, &full, v6, &t0);
        if (s == DS_BLOCKED) {
            if (c->flags & DS_F_MONITOR) {
                count(DS_C_MONITOR_PASS);
                return XDP_PASS;
            }
            count(DS_C_DROP_FRAGMENT);
            return XDP_DROP;
        }
        count(s == DS_SPARED ? DS_C_WHITELIST_PASS : unscreened);
        return XDP_PASS;
    }

malformed:
    count(DS_C_PARSE_FAIL);
    return XDP_PASS;
}

/* The loader's clock calibration: writes (jiffies, coarse CLOCK_MONOTONIC ns) read
 * back to back into the first 16 bytes of the test frame (BPF_PROG_TEST_RUN returns it). */
int ds_clock_probe(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u64 *out = data;
    if ((void *)(out + 2) > data_end)
        return XDP_ABORTED;
    out[0] = bpf_jiffies64();
    out[1] = bpf_ktime_get_coarse_ns();
    return XDP_PASS;
}

#ifdef DS_WITH_TRACEPOINT
/* A handshake the server completed, from a screened local port and address: +1 established,
 * +1 in the source's rate window, and a block for a source now over a limit (its parallel
 * SYNs passed XDP before their handshakes were counted). */
static __always_inline void handshake_done(struct ds_config *cfg, struct ds_key *key,
                                           const struct ds_key *full)
{
    /* The coarse clock is not allowed here; both read CLOCK_MONOTONIC. */
    u64 now = bpf_ktime_get_ns();
    struct ds_track *t = track.lookup(key);
    if (!t) {
        /* Insert, never overwrite (XDP may have made the entry meanwhile), then take
         * whichever entry stands. None at all is counted: a handshake never goes
         * uncounted silently. */
        struct ds_track nt = {};
        nt.win_start = now;
        nt.syn_start = now;
        track.insert(key, &nt);
        t = track.lookup(key);
        if (!t) {
            count(DS_C_TRACK_FAIL);
            return;
        }
    }
    count(DS_C_TP_OPENED);
    __sync_fetch_and_add(&t->established, 1);
    u64 w = cfg->conn_window_ns;
    if (w) {
        u64 e = now - t->win_start;
        if (now < t->win_start || e >= 2 * w) {
            t->prev = 0;
            t->cur = 0;
            t->win_start = now;
        } else if (e >= w) {
            t->prev = t->cur;
            t->cur = 0;
            t->win_start += w;
        }
    }
    __sync_fetch_and_add(&t->cur, 1);

    if (cfg->heartbeat_timeout_ns && stale(now, cfg))
        return;
    struct ds_block *b = blocks.lookup(key);
    if (b && b->expires > now)
        return;
    if (cfg->conn_limit && rate_estimate(t, now, w) > cfg->conn_limit) {
        make_block(key, full, cfg, t, now, DS_REASON_CONNECTIONS,
                   (u32)rate_estimate(t, now, w), DS_EV_TRACEPOINT);
        return;
    }
    if (cfg->simul_limit && t->established > (s32)cfg->simul_limit)
        make_block(key, full, cfg, t, now, DS_REASON_SIMULTANEOUS, (u32)t->established,
                   DS_EV_TRACEPOINT);
}

/* A source's key: IPv6 masked to the configured prefix. */
static __always_inline void mask_source(struct ds_key *key, const struct ds_key *full,
                                        const struct ds_config *cfg)
{
    *key = *full;
    if (!is_mapped(full)) {
        key->addr[0] &= cfg->v6mask[0];
        key->addr[1] &= cfg->v6mask[1];
        key->addr[2] &= cfg->v6mask[2];
        key->addr[3] &= cfg->v6mask[3];
    }
}

/* A connection from a source left ESTABLISHED: -1 established (never below 0). */
static __always_inline void connection_ended(struct ds_key *key)
{
    struct ds_track *t = track.lookup(key);
    if (!t)
        return;
    count(DS_C_TP_CLOSED);
    if (t->established > 0)
        __sync_fetch_and_add(&t->established, -1);
}

#ifdef DS_WITH_SOCKOPS
/* By source: ends the sock_ops program counted, for the tracepoint, which fires right
 * after it in the same state change, to leave alone (it counts only the ends of
 * connections made while no sock_ops program ran). Not pinned. */
BPF_TABLE("lru_hash", struct ds_key, u32, ends_counted, 65536);

/* Handshakes, and the ends of the connections they made, are counted here: a sock_ops
 * program on the cgroup root (every socket of the host, in every namespace), which the
 * kernel runs at every passive open and, once asked (BPF_SOCK_OPS_STATE_CB_FLAG), at
 * every state change of that socket, always. The socket tracepoint is a tracing program,
 * and the kernel skips one (counting it only in the program's recursion_misses) on a CPU
 * where a tracing program already runs or a bpf() map call by any process has paused
 * them; a handshake that completed there went uncounted, and that source's next
 * connection over the limit passed. */
int ds_handshake(struct bpf_sock_ops *skops)
{
    u32 op = skops->op;
    if (op == BPF_SOCK_OPS_STATE_CB) {
        if (skops->args[0] != TCP_ESTABLISHED_ || skops->args[1] == TCP_ESTABLISHED_)
            return 1;
    } else if (op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        return 1;
    }
    u32 lport = skops->local_port;
    u32 word = lport >> 6;
    u64 *bits = ports.lookup(&word);
    if (!bits || !(*bits & (1ULL << (lport & 63))))
        return 1;
    u32 zero = 0;
    struct ds_config *cfg = config.lookup(&zero);
    if (!cfg || !(cfg->flags & DS_F_ENABLED))
        return 1;
    /* Every field read once, unconditionally, as volatile loads: clang otherwise shares
     * one computed context pointer between the branches, which the verifier refuses. */
    u32 family = *(volatile u32 *)&skops->family;
    u32 lip4 = *(volatile u32 *)&skops->local_ip4;
    u32 rip4 = *(volatile u32 *)&skops->remote_ip4;
    struct ds_key local = {}, full = {};
    if (family == AF_INET_) {
        local.addr[2] = bpf_htonl(0xffff);
        local.addr[3] = lip4;
        full.addr[2] = bpf_htonl(0xffff);
        full.addr[3] = rip4;
    } else if (family == AF_INET6_) {
        local.addr[0] = *(volatile u32 *)&skops->local_ip6[0];
        local.addr[1] = *(volatile u32 *)&skops->local_ip6[1];
        local.addr[2] = *(volatile u32 *)&skops->local_ip6[2];
        local.addr[3] = *(volatile u32 *)&skops->local_ip6[3];
        full.addr[0] = *(volatile u32 *)&skops->remote_ip6[0];
        full.addr[1] = *(volatile u32 *)&skops->remote_ip6[1];
        full.addr[2] = *(volatile u32 *)&skops->remote_ip6[2];
        full.addr[3] = *(volatile u32 *)&skops->remote_ip6[3];
    } else {
        return 1;
    }
    if (!local_addrs.lookup(&local))
        return 1;
    struct ds_key key;
    mask_source(&key, &full, cfg);
    if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
                                             BPF_SOCK_OPS_STATE_CB_FLAG);
        handshake_done(cfg, &key, &full);
        return 1;
    }
    connection_ended(&key);
    u32 one = 1;
    u32 *n = ends_counted.lookup(&key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else if (ends_counted.insert(&key, &one) != 0 && (n = ends_counted.lookup(&key)))
        __sync_fetch_and_add(n, 1);
    return 1;
}
#endif

/* The ends of connections made while no sock_ops program ran (their counts seeded from
 * inet_diag at start), on the server side only: local port screened, local address one
 * of ours. Without the sock_ops program (no cgroup v2 to attach it to) every handshake
 * and every end is counted here. */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    int opened = args->newstate == TCP_ESTABLISHED_;
    int closed = args->oldstate == TCP_ESTABLISHED_ && !opened;
#ifdef DS_WITH_SOCKOPS
    if (!closed)
        return 0;
#else
    if (!opened && !closed)
        return 0;
#endif
    u32 sport = args->sport;
    u32 word = sport >> 6;
    u64 *bits = ports.lookup(&word);
    if (!bits || !(*bits & (1ULL << (sport & 63))))
        return 0;
    u32 zero = 0;
    struct ds_config *cfg = config.lookup(&zero);
    if (!cfg || !(cfg->flags & DS_F_ENABLED))
        return 0;

    struct ds_key local = {}, full = {};
    if (args->family == AF_INET_) {
        local.addr[2] = bpf_htonl(0xffff);
        bpf_probe_read_kernel(&local.addr[3], 4, args->saddr);
        full.addr[2] = bpf_htonl(0xffff);
        bpf_probe_read_kernel(&full.addr[3], 4, args->daddr);
    } else if (args->family == AF_INET6_) {
        /* Context fields are copied with probe reads: the verifier refuses
         * the derived context pointers a plain copy compiles to. */
        bpf_probe_read_kernel(local.addr, 16, args->saddr_v6);
        bpf_probe_read_kernel(full.addr, 16, args->daddr_v6);
    } else {
        return 0;
    }
    if (!local_addrs.lookup(&local))
        return 0;
    struct ds_key key;
    mask_source(&key, &full, cfg);
    if (opened) {
        handshake_done(cfg, &key, &full);
        return 0;
    }
#ifdef DS_WITH_SOCKOPS
    u32 *counted = ends_counted.lookup(&key);
    if (counted && *counted > 0) {
        __sync_fetch_and_add(counted, -1);
        return 0;
    }
#endif
    connection_ended(&key);
    return 0;
}
#endif
