/* dynscreen: structs and constants shared by the BPF programs and Python.
 *
 * Defined once here; mirrored in control/dataplane/abi.py, and
 * tests/test_abi.py checks that sizes and offsets agree (it compiles this
 * header with the host C compiler and compares with ctypes).
 *
 * Every source is keyed by 16 bytes: an IPv4 address as its IPv4-mapped
 * IPv6 form (::ffff:a.b.c.d, which is also what a dual-stack listener sees),
 * an IPv6 address masked to the configured prefix (default /64).
 */
#ifndef DYNSCREEN_H
#define DYNSCREEN_H

#ifndef __KERNEL__
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef int32_t __s32;
typedef uint64_t __u64;
#endif

/* Reasons of a block (as in the block file and the CLI). */
#define DS_REASON_CONNECTIONS   1
#define DS_REASON_SIMULTANEOUS  2
#define DS_REASON_AUTH_FAILURES 3
#define DS_REASON_FAILED_RCPTS  4
#define DS_REASON_RSETS         5
#define DS_REASON_MANUAL        6
#define DS_REASON_SPRAY         7
#define DS_REASON_PREFIX        8

/* Who made a block. */
#define DS_ORIGIN_KERNEL 1
#define DS_ORIGIN_LOGS   2
#define DS_ORIGIN_MANUAL 3
#define DS_ORIGIN_FILE   4

/* ds_config.flags */
#define DS_F_ENABLED       (1U << 0)
#define DS_F_MONITOR       (1U << 1)
#define DS_F_CLOSE_SESSION (1U << 2)
#define DS_F_WHITELIST_V6  (1U << 3) /* the whitelist holds an IPv6 entry other than ::1:
                                      * a hit on an IPv6 prefix block must ask it */
#define DS_F_FILTER        (1U << 4) /* the block filter is armed: a source whose filter bit is
                                      * clear has no entry in the block table */

/* ds_event.flags */
#define DS_EV_MONITOR    (1U << 0) /* made in monitor mode: counted, nothing dropped */
#define DS_EV_TABLE_FULL (1U << 1) /* the block table was full: no block was made */
#define DS_EV_TRACEPOINT (1U << 2) /* made by the socket tracepoint, not by XDP */

/* Per-CPU counters, indexes into the "counters" array. */
#define DS_C_PASSED          0  /* screened-port packets passed */
#define DS_C_DROP_BLOCKED    1  /* new connections (SYN) of a blocked source */
#define DS_C_DROP_SESSION    2  /* other packets of a blocked source (close_session) */
#define DS_C_DROP_SYN_CAP    3  /* SYNs over syn_per_second: dropped, no block */
#define DS_C_DROP_RATE       4  /* the SYN that tripped the connection-rate limit */
#define DS_C_DROP_SIMUL      5  /* the SYN that tripped the simultaneous limit */
#define DS_C_MONITOR_PASS    6  /* would have been dropped, passed in monitor mode */
#define DS_C_PARSE_FAIL      7  /* truncated or malformed headers: passed */
#define DS_C_BLOCKS_MADE     8  /* blocks created in the kernel */
#define DS_C_TABLE_FULL      9  /* blocks refused: block table full */
#define DS_C_EVENTS_LOST    10  /* ring buffer full */
#define DS_C_PAUSED         11  /* limit checks skipped: control plane heartbeat stale */
#define DS_C_WHITELIST_PASS 12  /* whitelisted address inside a blocked prefix passed */
#define DS_C_EXEMPT_PASS    13  /* limit reached by an exempt or whitelisted source */
#define DS_C_TP_OPENED      14  /* tracepoint: handshakes completed (screened) */
#define DS_C_TP_CLOSED      15  /* tracepoint: established connections ended */
#define DS_C_FRAGMENT       16  /* fragments without a TCP header (no port): passed */
#define DS_C_DROP_FRAGMENT  17  /* fragments without a TCP header and unwalkable IPv6
                                 * header chains of a blocked source: dropped */
#define DS_C_TRACK_FAIL     18  /* no per-source track entry could be made or found: a SYN
                                 * passed or a handshake went uncounted (never silent) */
#define DS_NCOUNTERS        19

/* ds_track.syn: the top bits cache, for the rest of the SYN-cap second, whether a source
 * over the cap was asked about (whitelist, exemption) and spared; the rest counts SYNs. */
#define DS_SYN_ASKED  (1U << 31)
#define DS_SYN_SPARED (1U << 30)
#define DS_SYN_COUNT  (DS_SYN_SPARED - 1)

struct ds_key {
    __u32 addr[4];              /* network byte order */
};

struct ds_lpm_key {
    __u32 prefixlen;            /* IPv4 ranges: 96 + IPv4 prefix length */
    __u32 addr[4];
};

struct ds_block {
    __u64 expires;              /* CLOCK_MONOTONIC ns; expired entries are treated as absent */
    __u64 drops;                /* packets dropped (counted, not dropped, in monitor mode) */
    __u32 reason;               /* DS_REASON_* */
    __u32 origin;               /* DS_ORIGIN_* */
};

struct ds_track {
    __u64 win_start;            /* start of the current rate window, ns */
    __u64 syn_start;            /* start of the current SYN-cap second, ns */
    __u32 cur;                  /* handshakes in the current window */
    __u32 prev;                 /* handshakes in the previous window */
    __u32 syn;                  /* SYNs in the current second (| DS_SYN_ASKED, DS_SYN_SPARED) */
    __s32 established;          /* established connections now */
};

struct ds_config {
    __u32 flags;                /* DS_F_* */
    __u32 conn_limit;           /* X connections ... (0: off) */
    __u64 conn_window_ns;       /* ... in Y minutes */
    __u32 simul_limit;          /* simultaneous connections (0: off) */
    __u32 syn_per_sec;          /* raw SYN cap per source (0: off) */
    __u64 block_ns;             /* duration of kernel-made blocks */
    __u64 heartbeat_timeout_ns; /* stale heartbeat pauses rate/simultaneous (0: never) */
    __u32 v6mask[4];            /* IPv6 prefix mask, network byte order */
    __u32 cidr_blocks;          /* entries in the CIDR block trie (0: skip the lookup) */
    __u32 ipv6_prefix;
    /* XDP's clock: CLOCK_MONOTONIC ns as jiffies * jiffy_ns + jiffies_base_ns (mod 2^64),
     * the calibration the loader measures (0: read bpf_ktime_get_coarse_ns instead). */
    __u64 jiffy_ns;
    __u64 jiffies_base_ns;
    /* Raised by the control plane after every change it makes to the block table (and at
     * load): the blocked-source cache trusts only entries made under the current value. */
    __u64 block_gen;
};

struct ds_event {
    __u32 addr[4];              /* the source key */
    __u64 expires;              /* CLOCK_MONOTONIC ns */
    __u32 reason;
    __u32 flags;                /* DS_EV_* */
    __u32 count;                /* the count that reached the limit */
    __u32 pad;
};

/* The block filter: a bitmap in front of the block table's hash lookup (an array map the
 * verifier inlines, where the hash lookup is a call). Bit ds_filter_slot(key) is set for
 * every key put in the table, before it is put there, and cleared only when the filter is
 * rebuilt from the table; a clear bit proves the key absent, a set bit may be another key's
 * (the lookup decides). The map holds two halves of 2^bits / 64 words each: the first
 * written only by the control plane (whole words), the second only by the kernel (atomic
 * OR), so neither overwrites the other's bits. */
#define DS_FILTER_MULT 0x9E3779B1U /* 2^32 / golden ratio: Fibonacci hashing */

/* The filter bit of a key, of 2^bits: the top bits of its folded words times DS_FILTER_MULT.
 * The product is a bijection of the fold, so keys whose folds agree in their lowest 32 - bits
 * bits never share a bit (with 24 bits: IPv4 addresses with the same first octet). */
static inline __u32 ds_filter_slot(const __u32 addr[4], __u32 bits)
{
    return ((addr[0] ^ addr[1] ^ addr[2] ^ addr[3]) * DS_FILTER_MULT) >> (32 - bits);
}

/* The blocked-source cache: per CPU, DS_BCACHE_SLOTS entries indexed by the low bits of
 * the filter slot, each remembering one source whose block-table entry XDP found standing,
 * so that its next packets on that CPU are dropped without the hash lookup (a call chain
 * of four returns, most of a blocked drop's cost). An entry is trusted only while
 * config.block_gen is the one it was made under and its copied expiry lies ahead: the
 * control plane raises block_gen after removing or rewriting any entry, and the kernel
 * itself only adds or renews entries (a later expiry), so a trusted entry is never wrong.
 * Drops counted through an entry are added to the block's entry every DS_BCACHE_FLUSH
 * drops and when the entry is made again or replaced (only while the block's expiry is
 * still the one copied: a block removed and made again starts from its own drops);
 * readers of drops add the rest the same way. A source dropped by a range block (the CIDR
 * trie) is remembered too, by its full address (plen 128), so its next
 * packets skip the trie walk: the whitelist is still asked on every such hit (a
 * whitelisted address inside a range passes), every writer of the trie raises block_gen
 * as well, and its drops go to the range's trie entry. Such an entry is probed even for a
 * source whose filter bit is clear, while the trie holds any range. */
#define DS_BCACHE_SLOTS 256
#define DS_BCACHE_FLUSH 64

struct ds_bcache {
    __u32 addr[4];              /* the source key */
    __u64 expires;              /* its block's expiry when the entry was made */
    __u64 gen;                  /* config.block_gen when the entry was made (0: empty) */
    __u64 drops;                /* drops not yet added to the block's entry */
    __u32 plen;                 /* 0: a block-table entry (addr: the source key); 128: a
                                 * range block's (addr: the full address; its drops go to
                                 * the range the trie matches for it, if its expiry is the
                                 * one copied) */
    __u32 pad;
};

#endif /* DYNSCREEN_H */
