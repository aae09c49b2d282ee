"""A process tree holding pipes and FIFOs of each shape the pipe tests check.

usage: pipes_tree.py WORKDIR OUTSIDE_PIPE_W_FD

Prints one JSON line describing what it set up, then idles until killed.  On SIGUSR1
the child reads everything queued on its read ends and prints it (hex) as a second JSON
line on stdout: the data a capture copied must still be there for the reader.  On
SIGUSR2 the root reads the packet-mode pipe from the child, one read per packet, and
prints the packets (hex) as a JSON line.  Layout:

  root:  the write end of a pipe to the child (capacity raised to 128 KiB, 10 bytes
         queued), a packet-mode pipe (two packets queued), the write end of a FIFO and a
         second read end of it, an unlinked FIFO opened read-write with 100 bytes
         queued, a 1 MiB pipe with 200,000 bytes queued (both ends), and the write end
         of a pipe whose read end the test keeps, with 6 bytes queued, and the read end
         of a packet-mode pipe from the child;
  child: the read end of the pipe from the root, the first read end of the FIFO, and
         the write end (O_DIRECT) of the packet-mode pipe to the root, through which it
         wrote packets of 1, 300, 4096, 7000 (which the kernel splits into 4096 and
         2904) and 17 bytes.
"""

import fcntl
import json
import os
import signal
import sys

F_SETPIPE_SZ = 1031
O_DIRECT = os.O_DIRECT
CHILD_PACKETS = (1, 300, 4096, 7000, 17)


def main(workdir, outside_w):
    out = {"pid": os.getpid(), "root": {}, "child": {}, "written": {}}
    r = out["root"]
    w = out["written"]
    os.write(outside_w, b"gone!\n")
    r["outside_w"] = outside_w
    w["outside"] = b"gone!\n".hex()

    pipe_r, pipe_w = os.pipe()
    fcntl.fcntl(pipe_w, F_SETPIPE_SZ, 131072)
    os.write(pipe_w, b"hello pipe")
    w["pipe"] = b"hello pipe".hex()

    pkt_r, pkt_w = os.pipe2(O_DIRECT)
    os.write(pkt_w, b"ab")
    os.write(pkt_w, b"cde")
    w["packet"] = b"abcde".hex()

    fifo = os.path.join(workdir, "fifo")
    os.mkfifo(fifo)
    fifo_r1 = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the child's (opened first)
    fifo_w = os.open(fifo, os.O_WRONLY)
    os.write(fifo_w, b"fifo data")
    w["fifo"] = b"fifo data".hex()

    gone = os.path.join(workdir, "gone-fifo")
    os.mkfifo(gone)
    gone_rw = os.open(gone, os.O_RDWR)
    os.write(gone_rw, b"x" * 100)
    os.unlink(gone)
    w["gone"] = (b"x" * 100).hex()

    big_r, big_w = os.pipe2(os.O_NONBLOCK)
    fcntl.fcntl(big_w, F_SETPIPE_SZ, 1 << 20)
    big = bytes(i % 251 for i in range(200_000))
    assert os.write(big_w, big) == len(big)
    w["big"] = big.hex()

    from_child_r, from_child_w = os.pipe2(O_DIRECT)
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        for fd in (pipe_w, pkt_r, pkt_w, fifo_w, gone_rw, big_r, big_w, outside_w):
            os.close(fd)
        os.close(from_child_r)
        for i, size in enumerate(CHILD_PACKETS):
            assert os.write(from_child_w, bytes([i + 1]) * size) == size
        c = {
            "pipe_r": pipe_r,
            "pipe_ino": os.fstat(pipe_r).st_ino,
            "fifo_r": fifo_r1,
            "packets_w": from_child_w,
        }
        os.write(ready_w, (json.dumps(c) + "\n").encode())

        def drain(*_):
            got = {}
            for name, fd in (("pipe", pipe_r), ("fifo", fifo_r1)):
                os.set_blocking(fd, False)
                data = b""
                try:
                    while chunk := os.read(fd, 65536):
                        data += chunk
                except BlockingIOError:
                    pass
                got[name] = data.hex()
            os.write(1, (json.dumps(got) + "\n").encode())

        signal.signal(signal.SIGUSR1, drain)
        while True:
            signal.pause()
    os.close(ready_w)
    os.close(pipe_r)
    os.close(fifo_r1)
    os.close(from_child_w)
    w["from_child"] = [(bytes([i + 1]) * n).hex() for i, n in enumerate(CHILD_PACKETS)]

    def read_packets(*_):
        # One read per packet: each asks for more than any packet holds.
        os.set_blocking(from_child_r, False)
        got = []
        try:
            while chunk := os.read(from_child_r, 65536):
                got.append(chunk.hex())
        except BlockingIOError:
            pass
        os.write(1, (json.dumps({"packets": got}) + "\n").encode())

    signal.signal(signal.SIGUSR2, read_packets)
    fifo_r2 = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a second read description
    out["child_pid"] = child
    with os.fdopen(ready_r) as f:
        out["child"] = json.loads(f.readline())
    for name, fd in (
        ("pipe_w", pipe_w),
        ("pkt_r", pkt_r),
        ("pkt_w", pkt_w),
        ("fifo_w", fifo_w),
        ("fifo_r2", fifo_r2),
        ("gone_rw", gone_rw),
        ("big_r", big_r),
        ("big_w", big_w),
        ("from_child_r", from_child_r),
    ):
        r[name] = fd
        r[name.rsplit("_", 1)[0] + "_ino"] = os.fstat(fd).st_ino
    r["fifo_path"], r["gone_path"] = fifo, gone
    print(json.dumps(out), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
