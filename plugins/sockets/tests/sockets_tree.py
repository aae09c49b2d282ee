"""A process tree holding one socket (and pipe) of each shape the socket tests check.

usage: sockets_tree.py WORKDIR OUTSIDE_SOCKET_FD OUTSIDE_PIPE_W_FD

Prints one JSON line describing what it set up (fd numbers per process, socket inodes,
ports, namespaces), then idles until killed.  Loopback only.  Layout:

  root:   socketpair ends, a seqpacket pair shut down one way, a dgram pair with a
          datagram queued, a unix listener on a path with one connection pending, an
          abstract unix listener with one connection accepted, TCP listeners on 127.0.0.1
          (one connection accepted with 11 bytes queued, one pending) and ::1 (one
          accepted), UDP sockets (one connected to the other, a datagram queued), udplite,
          raw, netlink and packet sockets, a family nobody handles (vsock), an MPTCP
          socket (an inet protocol nobody dumps), the end of a socketpair whose other
          end the test keeps, the write end of a pipe whose read end the test keeps;
  child:  the other socketpair end, the clients of the unix and TCP connections;
  netns:  a child in a network namespace of its own (unshare(CLONE_NEWNET)): a TCP
          listener on the same 127.0.0.1 port as the root's, an abstract unix listener
          of the same name as the root's, a ping (icmp) socket, and a UDP socket it made
          before unsharing (so in the root's namespace);
  moved:  a child that unshared a network namespace, made sockets there (a TCP
          listener with one connection accepted and one pending, an abstract unix
          listener), then went back to the root's namespace with setns(2): no task is
          in the namespace its sockets live in.
Also in the root: unix listeners whose path was unlinked, and replaced by a regular
file, and a TCP listener to which the child connected twice, never accepted.
"""

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
SIOCSIFFLAGS, SIOCGIFFLAGS, IFF_UP = 0x8914, 0x8913, 0x1
ETH_P_TEST = 0x88B5  # IEEE local experimental: nothing on lo carries it
libc = ctypes.CDLL(None, use_errno=True)


def ino(sock_or_fd):
    fd = sock_or_fd if isinstance(sock_or_fd, int) else sock_or_fd.fileno()
    return os.fstat(fd).st_ino


def queued(fd):
    return struct.unpack("i", fcntl.ioctl(fd, 0x541B, b"\0\0\0\0"))[0]  # FIONREAD


def wait_for(cond):
    deadline = time.monotonic() + 10
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit("sockets_tree: timed out setting up")
        time.sleep(0.005)


def lo_up():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def netns_child(ready_w, udp_before, tcp_port, abstract_name):
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    lo_up()
    # Ping sockets are allowed per namespace; this one is the child's own.
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 0")
    ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", tcp_port))
    listener.listen(3)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(abstract_name)
    abstract.listen(2)
    info = {
        "netns": os.stat("/proc/self/ns/net").st_ino,
        "tcp": listener.fileno(),
        "tcp_ino": ino(listener),
        "abstract": abstract.fileno(),
        "abstract_ino": ino(abstract),
        "ping": ping.fileno(),
        "ping_ino": ino(ping),
        "udp_before": udp_before.fileno(),
        "udp_before_ino": ino(udp_before),
        "udp_before_port": udp_before.getsockname()[1],
    }
    os.write(ready_w, (json.dumps(info) + "\n").encode())
    os.close(ready_w)
    while True:
        signal.pause()


def moved_child(ready_w):
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    lo_up()
    away = os.stat("/proc/self/ns/net").st_ino
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(listener.getsockname())
    conn, _ = listener.accept()
    waiting = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    waiting.connect(listener.getsockname())  # never accepted
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0asyckpt-sockets-moved-{os.getpid()}")
    abstract.listen(1)
    if libc.setns(home, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(home)
    assert os.stat("/proc/self/ns/net").st_ino != away
    info = {"away": away, "port": listener.getsockname()[1]}
    for name, s in (
        ("listener", listener),
        ("client", client),
        ("conn", conn),
        ("waiting", waiting),
        ("abstract", abstract),
    ):
        info[name], info[name + "_ino"] = s.fileno(), ino(s)
    info["client_port"] = client.getsockname()[1]
    info["waiting_port"] = waiting.getsockname()[1]
    os.write(ready_w, (json.dumps(info) + "\n").encode())
    os.close(ready_w)
    while True:
        signal.pause()


def main(workdir, outside_sock, outside_pipe_w):
    out = {"pid": os.getpid(), "root": {}, "child": {}}
    r = out["root"]
    keep = []  # sockets must not be garbage collected
    r["outside_sock"] = outside_sock
    r["outside_sock_ino"] = ino(outside_sock)
    r["outside_pipe_w"] = outside_pipe_w

    # The netns child first, before the root holds anything it should not inherit.
    udp_before = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_before.bind(("127.0.0.1", 0))
    tcp4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp4.bind(("127.0.0.1", 0))
    tcp4.listen(7)
    abstract_name = f"\0asyckpt-sockets-test-{os.getpid()}"
    tcp_port = tcp4.getsockname()[1]
    ns_r, ns_w = os.pipe()
    netns_pid = os.fork()
    if netns_pid == 0:
        os.close(ns_r)
        keep_fds = {ns_w, udp_before.fileno()}
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd > 2 and fd not in keep_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        netns_child(ns_w, udp_before, tcp_port, abstract_name)
    os.close(ns_w)
    udp_before.close()
    out["netns_pid"] = netns_pid
    with os.fdopen(ns_r) as f:
        out["netns"] = json.loads(f.readline())

    mv_r, mv_w = os.pipe()
    moved_pid = os.fork()
    if moved_pid == 0:
        os.close(mv_r)
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd > 2 and fd != mv_w:
                with contextlib.suppress(OSError):
                    os.close(fd)
        moved_child(mv_w)
    os.close(mv_w)
    out["moved_pid"] = moved_pid
    with os.fdopen(mv_r) as f:
        out["moved"] = json.loads(f.readline())

    # Unix listeners whose path was unlinked since, and replaced by another file.
    gone_path = os.path.join(workdir, "gone.sock")
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    gone.bind(gone_path)
    gone.listen(1)
    os.unlink(gone_path)
    replaced_path = os.path.join(workdir, "replaced.sock")
    replaced = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    replaced.bind(replaced_path)
    os.unlink(replaced_path)
    with open(replaced_path, "w") as f:
        f.write("not a socket")
    # A TCP listener the child connects to twice, never accepted.
    tcp_q = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp_q.bind(("127.0.0.1", 0))
    tcp_q.listen(5)
    keep += [gone, replaced, tcp_q]

    # Unix: a stream socketpair split between root and child, 7 bytes queued to the
    # child's end; a seqpacket pair shut down one way; a dgram pair, one datagram queued.
    a, b = socket.socketpair()
    a.send(b"7 bytes")
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s1.shutdown(socket.SHUT_WR)
    d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    d1.send(b"abc")
    listen_path = os.path.join(workdir, "listen.sock")
    ul = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ul.bind(listen_path)
    ul.listen(5)
    ua = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ua.bind(abstract_name)
    ua.listen(4)
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp6.bind(("::1", 0))
    tcp6.listen(3)
    keep += [a, s1, s2, d1, d2, ul, ua, tcp4, tcp6]

    tcp6_addr = tcp6.getsockname()[:2]
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        tcp_q_addr = tcp_q.getsockname()
        for s in (a, s1, s2, d1, d2, ul, ua, tcp4, tcp6, gone, replaced, tcp_q):
            s.close()
        for fd in (outside_sock, outside_pipe_w):
            os.close(fd)
        c = {"pair_b": b.fileno(), "pair_b_ino": ino(b)}
        pending = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        pending.connect(listen_path)  # never accepted
        accepted = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        accepted.connect(abstract_name)
        tcp_client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp_client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        tcp_client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        tcp_client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tcp_client.connect(("127.0.0.1", tcp_port))
        tcp_client.send(b"eleven byte")
        tcp_pending = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp_pending.connect(("127.0.0.1", tcp_port))  # never accepted
        tcp6_client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        tcp6_client.connect(tcp6_addr)
        queued_1 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        queued_1.connect(tcp_q_addr)
        queued_2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        queued_2.connect(tcp_q_addr)
        c["queued_ports"] = [queued_1.getsockname()[1], queued_2.getsockname()[1]]
        for name, s in (
            ("queued_1", queued_1),
            ("queued_2", queued_2),
            ("unix_pending", pending),
            ("unix_client", accepted),
            ("tcp_client", tcp_client),
            ("tcp_pending", tcp_pending),
            ("tcp6_client", tcp6_client),
        ):
            c[name], c[name + "_ino"] = s.fileno(), ino(s)
        c["tcp_client_port"] = tcp_client.getsockname()[1]
        c["tcp_pending_port"] = tcp_pending.getsockname()[1]
        c["tcp6_client_port"] = tcp6_client.getsockname()[1]
        os.write(ready_w, (json.dumps(c) + "\n").encode())
        os.close(ready_w)
        while True:
            signal.pause()
    os.close(ready_w)
    b.close()
    with os.fdopen(ready_r) as f:
        out["child"] = json.loads(f.readline())
    out["child_pid"] = child

    conn, _ = ua.accept()
    tcp_conn, _ = tcp4.accept()  # the first client; the second stays pending
    tcp6_conn, _ = tcp6.accept()
    wait_for(lambda: queued(tcp_conn.fileno()) == 11)

    udp_recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_recv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    udp_recv.bind(("127.0.0.1", 0))
    udp_send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_send.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    udp_send.connect(udp_recv.getsockname())
    udp_send.send(b"udp!")
    wait_for(lambda: queued(udp_recv.fileno()) == 4)
    udplite = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, 136)
    udplite.bind(("::1", 0))
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    netlink.bind((0, 0x1 | 0x10))  # RTMGRP_LINK, RTMGRP_IPV4_IFADDR: groups 1 and 5
    packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_TEST))
    packet.bind(("lo", ETH_P_TEST))
    vsock = socket.socket(40, socket.SOCK_STREAM)  # AF_VSOCK
    mptcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
    keep += [conn, tcp_conn, tcp6_conn, udp_recv, udp_send, udplite, raw, netlink, packet]
    keep += [vsock, mptcp]

    for name, s in (
        ("pair_a", a),
        ("seq_shut", s1),
        ("seq_other", s2),
        ("dgram_sender", d1),
        ("dgram_receiver", d2),
        ("unix_listener", ul),
        ("abstract_listener", ua),
        ("unix_conn", conn),
        ("tcp_listener", tcp4),
        ("tcp_conn", tcp_conn),
        ("tcp6_listener", tcp6),
        ("tcp6_conn", tcp6_conn),
        ("udp_recv", udp_recv),
        ("udp_send", udp_send),
        ("udplite", udplite),
        ("raw", raw),
        ("netlink", netlink),
        ("packet", packet),
        ("vsock", vsock),
        ("mptcp", mptcp),
        ("gone", gone),
        ("replaced", replaced),
        ("tcp_q", tcp_q),
    ):
        r[name], r[name + "_ino"] = s.fileno(), ino(s)
    r["listen_path"] = listen_path
    r["gone_path"], r["replaced_path"] = gone_path, replaced_path
    r["tcp_q_port"] = tcp_q.getsockname()[1]
    r["abstract_name"] = abstract_name[1:]
    r["tcp_port"] = tcp4.getsockname()[1]
    r["tcp6_port"] = tcp6.getsockname()[1]
    r["udp_recv_port"] = udp_recv.getsockname()[1]
    r["udp_send_port"] = udp_send.getsockname()[1]
    r["udplite_port"] = udplite.getsockname()[1]
    r["netlink_port"] = netlink.getsockname()[0]
    r["lo_index"] = socket.if_nametoindex("lo")
    r["netns"] = os.stat("/proc/self/ns/net").st_ino
    print(json.dumps(out), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
