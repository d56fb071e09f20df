"""The kernel side as Python sees it: the only package that touches bcc or the bpf syscall.

`abi` mirrors bpf/dynscreen.h, `loader` compiles, loads, attaches and adopts
the programs (imports bcc), `bpfsys` wraps the libbpf calls bcc does not export,
`kernel` finds headers and mounts tracefs/bpffs, `sockets` seeds counts from
inet_diag.
"""
