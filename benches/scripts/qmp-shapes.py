#!/usr/bin/env python3
"""Three shapes of the shared qemu-storage-daemon's per-image QMP work,
timed against one bare daemon (docs/benchmarks.md, "What we tried").

  A  what the library does: blockdev-add (qcow2, file inside) with
     block-export-add (FUSE) at attach; block-export-del (hard) with
     blockdev-del at detach, until BLOCK_EXPORT_DELETED.
  B  one FUSE export kept on a raw node over null-co; the image's node is
     swapped in and out with blockdev-reopen (the export stays mounted).
  C  B with the image's node kept open but inactive between cycles
     (blockdev-set-active), so that qemu holds no lock on it.

Each step's batch is sent in one write, as the library does. Run as root:
  python3 benches/scripts/qmp-shapes.py [ROUNDS]
It makes a 64 MiB qcow2 in a temporary directory and leaves nothing behind
(the daemon is killed, its FUSE exports unmounted, the directory removed).
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 60
tmp = tempfile.mkdtemp(prefix="diskmount-qmp-shapes-")
img = os.path.join(tmp, "a.qcow2")
subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "64M"], check=True)
exports = [os.path.join(tmp, n) for n in ("export-a", "export-b")]
for e in exports:
    open(e, "w").close()

ours, theirs = socket.socketpair()
daemon = subprocess.Popen(
    ["qemu-storage-daemon", "--chardev", "socket,id=q,fd=%d" % theirs.fileno(),
     "--monitor", "chardev=q"],
    pass_fds=[theirs.fileno()])
theirs.close()
f = ours.makefile("rwb", buffering=0)


def batch(cmds, event=None):
    """Sends cmds in one write; their replies (and waits for event)."""
    data = b"".join(
        json.dumps({"execute": c, "arguments": a} if a is not None else {"execute": c},
                   separators=(",", ":")).encode() + b"\n" for c, a in cmds)
    f.write(data)
    replies, seen = [], event is None
    while len(replies) < len(cmds) or not seen:
        m = json.loads(f.readline())
        if "event" in m:
            seen = seen or m["event"] == event
        else:
            replies.append(m)
    return replies


def ok(replies):
    for r in replies:
        if "error" in r:
            raise RuntimeError(r["error"]["desc"])
    return replies


def qcow2(node):
    return {"driver": "qcow2", "node-name": node,
            "file": {"driver": "file", "filename": img, "locking": "on"}}


def swap(child):
    return ("blockdev-reopen", {"options": [{"driver": "raw", "node-name": "p", "file": child}]})


try:
    json.loads(f.readline())  # the greeting
    ok(batch([("qmp_capabilities", None)]))
    ok(batch([
        ("blockdev-add", {"driver": "null-co", "node-name": "z", "size": 64 << 20}),
        ("blockdev-add", {"driver": "raw", "node-name": "p", "file": "z"}),
        ("block-export-add", {"type": "fuse", "id": "ep", "node-name": "p",
                              "mountpoint": exports[1], "writable": True}),
        ("blockdev-add", qcow2("parked")),
        ("blockdev-set-active", {"node-name": "parked", "active": False}),
    ]))
    times = {k: [] for k in ("A attach", "A detach", "B attach", "B detach",
                             "C attach", "C detach")}
    for n in range(ROUNDS):
        d = "d%d" % n
        t = time.perf_counter()
        ok(batch([("blockdev-add", qcow2(d)),
                  ("block-export-add", {"type": "fuse", "id": "e" + d, "node-name": d,
                                        "mountpoint": exports[0], "writable": True})]))
        times["A attach"].append(time.perf_counter() - t)
        t = time.perf_counter()
        r = batch([("block-export-del", {"id": "e" + d, "mode": "hard"}),
                   ("blockdev-del", {"node-name": d})], "BLOCK_EXPORT_DELETED")
        if "error" in r[1]:
            ok(batch([("blockdev-del", {"node-name": d})]))
        times["A detach"].append(time.perf_counter() - t)

        d = "b%d" % n
        t = time.perf_counter()
        ok(batch([("blockdev-add", qcow2(d)), swap(d)]))
        times["B attach"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ok(batch([swap("z"), ("blockdev-del", {"node-name": d})]))
        times["B detach"].append(time.perf_counter() - t)

        t = time.perf_counter()
        ok(batch([("blockdev-set-active", {"node-name": "parked", "active": True}),
                  swap("parked")]))
        times["C attach"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ok(batch([swap("z"), ("blockdev-set-active", {"node-name": "parked", "active": False})]))
        times["C detach"].append(time.perf_counter() - t)

    # A FUSE export refuses an inactive node in qemu 10.0.2, which is why C
    # needs B's swap: say what qemu says.
    r = batch([("blockdev-add", {"driver": "null-co", "node-name": "i", "size": 1 << 20}),
               ("blockdev-set-active", {"node-name": "i", "active": False}),
               ("block-export-add", {"type": "fuse", "id": "ei", "node-name": "i",
                                     "mountpoint": exports[0], "allow-inactive": True})])
    print("FUSE export of an inactive node:", r[2].get("error", {}).get("desc", "accepted"))

    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print("| shape | attach ms | detach ms | per cycle ms |")
    print("|---|---|---|---|")
    for s in "ABC":
        a, b = med[s + " attach"], med[s + " detach"]
        print("| %s | %.2f | %.2f | %.2f |" % (s, a, b, a + b))
finally:
    daemon.kill()
    daemon.wait()
    for e in exports:
        subprocess.run(["umount", e], stderr=subprocess.DEVNULL)
    shutil.rmtree(tmp)
