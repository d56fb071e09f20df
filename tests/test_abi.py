"""bpf/dynscreen.h and its ctypes mirror (control/dataplane/abi.py) agree.

The header is compiled with the host C compiler into a tiny program that
prints sizeof/offsetof of every field of every struct and the value of every
``#define DS_*``; the struct and field lists are read from the header itself,
so a field added on one side only is caught too. Needs a C compiler, not root.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path

import pytest

from dynscreen.control.dataplane import abi

from conftest import have, require

HEADER = Path(__file__).resolve().parents[1] / "bpf" / "dynscreen.h"

# Counter names the header abbreviates (DS_C_<NAME> -> abi.COUNTERS entry).
COUNTER_ALIASES = {"DROP_SIMUL": "drop_simultaneous"}


def _header_text() -> str:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def header_structs() -> dict[str, list[tuple[str, int | None]]]:
    """struct name -> [(field, array length or None)], in declaration order."""
    out: dict[str, list[tuple[str, int | None]]] = {}
    for m in re.finditer(r"struct\s+(ds_\w+)\s*\{(.*?)\}\s*;", _header_text(), flags=re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = decl.strip()
            if not decl:
                continue
            fm = re.fullmatch(r"[\w\s]+?\s+(\w+)\s*(?:\[\s*(\d+)\s*\])?", decl)
            assert fm, f"cannot parse field declaration {decl!r} of struct {m.group(1)}"
            fields.append((fm.group(1), int(fm.group(2)) if fm.group(2) else None))
        out[m.group(1)] = fields
    return out


def header_defines() -> list[str]:
    return re.findall(r"^\s*#\s*define\s+(DS_\w+)\s+\S", _header_text(), flags=re.M)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """What the C compiler says: sizes, offsets, field sizes and constants."""
    require(have("cc"), "no C compiler (cc) on this host")
    structs = header_structs()
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        '#include "dynscreen.h"',
        "int main(void) {",
    ]
    for s, fields in structs.items():
        lines.append(f'    printf("struct {s} %zu %zu\\n", sizeof(struct {s}), '
                     f"_Alignof(struct {s}));")
        for f, _ in fields:
            lines.append(
                f'    printf("field {s} {f} %zu %zu\\n", offsetof(struct {s}, {f}), '
                f"sizeof(((struct {s} *)0)->{f}));")
    for d in header_defines():
        lines.append(f'    printf("define {d} %lld\\n", (long long)({d}));')
    lines += ["    return 0;", "}", ""]
    d = tmp_path_factory.mktemp("abi")
    src, exe = d / "layout.c", d / "layout"
    src.write_text("\n".join(lines))
    cc = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{HEADER.parent}",
                         "-o", str(exe), str(src)], capture_output=True, text=True)
    assert cc.returncode == 0, f"the header does not compile:\n{cc.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    sizes: dict[str, tuple[int, int]] = {}
    fields: dict[str, list[tuple[str, int, int]]] = {}
    defines: dict[str, int] = {}
    for line in run.stdout.splitlines():
        kind, *rest = line.split()
        if kind == "struct":
            sizes[rest[0]] = (int(rest[1]), int(rest[2]))
        elif kind == "field":
            fields.setdefault(rest[0], []).append((rest[1], int(rest[2]), int(rest[3])))
        else:
            defines[rest[0]] = int(rest[1])
    return {"structs": structs, "sizes": sizes, "fields": fields, "defines": defines}


def _prefixed(defines: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in defines.items() if k.startswith(prefix)}


# ---- the header parses as expected ----------------------------------------------------------


def test_header_declares_every_struct_of_the_mirror():
    assert set(header_structs()) == set(abi.STRUCTS)


def test_header_defines_the_python_constants():
    names = set(header_defines())
    for needed in ("DS_REASON_MANUAL", "DS_ORIGIN_FILE", "DS_F_ENABLED", "DS_EV_TABLE_FULL",
                   "DS_C_PASSED", "DS_C_FRAGMENT", "DS_NCOUNTERS"):
        assert needed in names


# ---- structs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(abi.STRUCTS))
def test_struct_size_and_alignment(c_layout, name):
    size, align = c_layout["sizes"][name]
    cls = abi.STRUCTS[name]
    assert ctypes.sizeof(cls) == size, f"sizeof(struct {name})"
    assert ctypes.alignment(cls) == align, f"_Alignof(struct {name})"


@pytest.mark.parametrize("name", sorted(abi.STRUCTS))
def test_struct_fields_names_offsets_sizes(c_layout, name):
    cls = abi.STRUCTS[name]
    c_fields = c_layout["fields"][name]
    py_names = [f[0] for f in cls._fields_]
    assert py_names == [f for f, _, _ in c_fields], f"field names/order of struct {name}"
    for fname, offset, size in c_fields:
        desc = getattr(cls, fname)
        assert desc.offset == offset, f"offsetof(struct {name}, {fname})"
        assert desc.size == size, f"sizeof(struct {name}.{fname})"


@pytest.mark.parametrize("name", sorted(abi.STRUCTS))
def test_array_fields_have_the_same_length(c_layout, name):
    cls = abi.STRUCTS[name]
    py = dict(cls._fields_)
    for fname, n in c_layout["structs"][name]:
        if n is not None:
            assert issubclass(py[fname], ctypes.Array), f"{name}.{fname} is an array in C"
            assert py[fname]._length_ == n


def test_no_implicit_padding_in_kernel_structs(c_layout):
    """Keys and values are compared/copied as bytes: hidden padding would hold garbage."""
    for name, fields in c_layout["fields"].items():
        end = 0
        for fname, offset, size in fields:
            assert offset == end, f"padding before {name}.{fname}"
            end = offset + size
        assert end == c_layout["sizes"][name][0], f"trailing padding in struct {name}"


# ---- constants ----------------------------------------------------------------------------


def test_reasons(c_layout):
    c = _prefixed(c_layout["defines"], "DS_REASON_")
    assert {v: k.lower() for k, v in c.items()} == abi.REASONS
    assert {k: v for v, k in abi.REASONS.items()} == abi.REASON_IDS


def test_origins(c_layout):
    c = _prefixed(c_layout["defines"], "DS_ORIGIN_")
    assert {v: k.lower() for k, v in c.items()} == abi.ORIGINS
    assert {k: v for v, k in abi.ORIGINS.items()} == abi.ORIGIN_IDS


def test_config_flags(c_layout):
    c = _prefixed(c_layout["defines"], "DS_F_")
    py = {k[2:]: getattr(abi, k) for k in dir(abi) if k.startswith("F_")}
    assert c == py


def test_event_flags(c_layout):
    c = _prefixed(c_layout["defines"], "DS_EV_")
    py = {k[3:]: getattr(abi, k) for k in dir(abi) if k.startswith("EV_")}
    assert c == py


def test_syn_cap_bits(c_layout):
    c = _prefixed(c_layout["defines"], "DS_SYN_")
    assert c == {"ASKED": abi.SYN_ASKED, "SPARED": abi.SYN_SPARED, "COUNT": abi.SYN_COUNT}
    assert abi.SYN_ASKED & abi.SYN_SPARED == 0 and (abi.SYN_ASKED | abi.SYN_SPARED) & \
        abi.SYN_COUNT == 0
    assert abi.SYN_ASKED | abi.SYN_SPARED | abi.SYN_COUNT == 2**32 - 1


def test_flags_are_distinct_single_bits(c_layout):
    for prefix in ("DS_F_", "DS_EV_"):
        vals = list(_prefixed(c_layout["defines"], prefix).values())
        assert len(set(vals)) == len(vals)
        assert all(v > 0 and v & (v - 1) == 0 for v in vals)


def test_counters_order_and_count(c_layout):
    defines = c_layout["defines"]
    c = _prefixed(defines, "DS_C_")
    assert defines["DS_NCOUNTERS"] == abi.NCOUNTERS == len(abi.COUNTERS)
    assert sorted(c.values()) == list(range(abi.NCOUNTERS)), "indexes 0..N-1, each once"
    for cname, idx in c.items():
        assert abi.COUNTERS[idx] == COUNTER_ALIASES.get(cname, cname.lower()), f"DS_C_{cname}"
    assert len(set(abi.COUNTERS)) == len(abi.COUNTERS)


def test_blocked_source_cache_constants(c_layout):
    """The cache's size (the control plane reads every slot for pending drops) and flush
    threshold agree; the size is a power of two (the kernel indexes by slot & (size - 1))."""
    defines = c_layout["defines"]
    assert defines["DS_BCACHE_SLOTS"] == abi.BCACHE_SLOTS
    assert defines["DS_BCACHE_FLUSH"] == abi.BCACHE_FLUSH
    assert abi.BCACHE_SLOTS & (abi.BCACHE_SLOTS - 1) == 0


# ---- key conversions ----------------------------------------------------------------------


def test_ipv4_key_is_the_mapped_form():
    k = abi.key_for(IPv4Address("198.51.100.7"))
    assert bytes(k) == bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 7])
    assert bytes(abi.key_for(IPv4Network("198.51.100.7/32"))) == bytes(k)
    assert abi.source_of_key(k, 64) == IPv4Network("198.51.100.7/32")


def test_ipv6_key_is_the_network_address():
    net = IPv6Network("2001:db8:1:2::/64")
    k = abi.key_for(net)
    assert bytes(k) == net.network_address.packed
    assert abi.source_of_key(k, 64) == net
    assert abi.source_of_key(abi.key_for(IPv6Network("2001:db8:1::/48")), 48) == \
        IPv6Network("2001:db8:1::/48")


def test_ipv6_address_key_is_unmasked():
    a = IPv6Address("2001:db8:1:2::99")
    assert bytes(abi.key_for(a)) == a.packed


@pytest.mark.parametrize("text,plen", [
    ("203.0.113.0/24", 120), ("0.0.0.0/0", 96), ("198.51.100.7/32", 128),
    ("2001:db8::/32", 32), ("2001:db8:1:2::5/128", 128), ("::/0", 0),
])
def test_lpm_keys_round_trip(text, plen):
    net = ip_network(text)
    k = abi.lpm_key_for(net)
    assert k.prefixlen == plen
    assert abi.network_of_lpm(k) == net
    assert ctypes.sizeof(k) == 20


@pytest.mark.parametrize("prefix", [0, 1, 31, 32, 33, 48, 56, 63, 64, 96, 127, 128])
def test_v6_mask_bytes_in_memory_are_the_netmask(prefix):
    cfg = abi.Config()
    for i, w in enumerate(abi.v6_mask(prefix)):
        cfg.v6mask[i] = w
    raw = bytes(cfg)[abi.Config.v6mask.offset:abi.Config.v6mask.offset + 16]
    assert raw == IPv6Network(("::", prefix)).netmask.packed


def test_event_decodes_from_bytes():
    ev = abi.Event()
    ctypes.memmove(ev.addr, bytes(abi.key_for(IPv4Address("192.0.2.9"))), 16)
    ev.expires, ev.reason, ev.flags, ev.count = 123, 1, abi.EV_TABLE_FULL, 61
    back = abi.Event.from_buffer_copy(bytes(ev))
    assert (back.expires, back.reason, back.flags, back.count) == (123, 1, abi.EV_TABLE_FULL, 61)
    assert abi.source_of_key(abi.Key.from_buffer_copy(bytes(back.addr)), 64) == \
        IPv4Network("192.0.2.9/32")


# ---- the block filter's slot: one function, two languages -----------------------------------

FILTER_SOURCES = ("192.0.2.9", "10.0.0.0", "10.255.255.255", "198.51.100.7", "0.0.0.0",
                  "255.255.255.255", "2001:db8:7:7::", "2001:db8::1", "::", "fe80::1",
                  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")


def test_filter_multiplier(c_layout):
    assert c_layout["defines"]["DS_FILTER_MULT"] == abi.FILTER_MULT


def test_filter_slot_agrees_with_the_header(tmp_path):
    """ds_filter_slot compiled from the header and abi.filter_slot give every key the same
    bit, for every filter size the loader may choose: a different bit would let a blocked
    source through (its entry never looked up)."""
    require(have("cc"), "no C compiler (cc) on this host")
    keys = [bytes(abi.key_for(ip_network(s))) for s in FILTER_SOURCES]
    rows = ", ".join("{" + ", ".join(str(w) for w in abi._WORDS.unpack(k)) + "}" for k in keys)
    src = tmp_path / "slot.c"
    src.write_text(
        '#include <stdio.h>\n#include "dynscreen.h"\n'
        f"static const __u32 keys[][4] = {{{rows}}};\n"
        "int main(void) {\n"
        "    for (unsigned i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)\n"
        "        for (__u32 bits = 16; bits <= 27; bits++)\n"
        '            printf("%u\\n", ds_filter_slot(keys[i], bits));\n'
        "    return 0;\n}\n")
    exe = tmp_path / "slot"
    cc = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{HEADER.parent}",
                         "-o", str(exe), str(src)], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    got = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True,
                                          check=True).stdout.split()]
    want = [abi.filter_slot(k, bits) for k in keys for bits in range(16, 28)]
    assert got == want
    assert all(0 <= s < 2**16 for s in want[::12])  # bits = 16: within 2^16


def test_filter_slots_of_one_first_octet_never_collide():
    """The claim in dynscreen.h: with 24 bits, IPv4 sources sharing their first octet get
    distinct bits (the bench's million fillers, 10.0.0.0 + i, set a million bits)."""
    slots = {abi.filter_slot(bytes(abi.key_for(IPv4Address(0x0A000000 + i * 97))), 24)
             for i in range(20_000)}
    assert len(slots) == 20_000
