"""Live upgrades of lbd (--upgrade-socket, SIGUSR2) and how a test tells
which process holds what while two lbds share the listeners:

    UpgradeLbd     an Lbd with --upgrade-socket and --workers whose successor
                   (like=) takes the same ports; spawn() starts it without
                   waiting, as a new lbd is ready when its log says so
    workers_args   --workers N, unless LBD_WORKERS in the environment decides
    log_ts, kv_int the ts= and a key=N of an lbd log line
    tcp_sockets, pids_holding, sockets_to_port_by_pid, unix_listener_pids,
    fd_links       sockets from /proc/net/{tcp,tcp6,unix} and their holders
                   from /proc/PID/fd

An lbd started by another one (SIGUSR2) is not the test's child: see
ForeignProc and set_subreaper in procs.
"""

import datetime
import os
import re

from .lbd import Lbd


def workers_args(n):
    """--workers n, unless n is None (or 0) or LBD_WORKERS in the environment
    decides (the sanitizer build)."""
    if not n or os.environ.get("LBD_WORKERS"):
        return []
    return ["--workers", str(n)]


class UpgradeLbd(Lbd):
    """lbd with --upgrade-socket sock_path (none when sock_path is None) and
    workers_args(workers).  With like=<another UpgradeLbd> it takes that one's
    ports (pools, admin, http) instead of free ones: the next lbd of an
    upgrade has the same flags (--workers and the environment may differ)."""

    def __init__(self, h, etcd_url, prefix, pools, sock_path=None, workers=None, like=None,
                 extra_args=(), env=None, name="lbd"):
        self._like = like
        self.sock_path = sock_path
        self.workers = workers
        super().__init__(h, etcd_url, prefix, pools, extra_args=extra_args, env=env, name=name)

    def _pick_ports(self):
        if self._like is None:
            super()._pick_ports()
            return
        self.pools = dict(self._like.pools)
        self.admin_port = self._like.admin_port
        self.http_port = self._like.http_port

    def argv(self):
        a = super().argv()
        if self.sock_path:
            a += ["--upgrade-socket", self.sock_path]
        return a + workers_args(self.workers)

    def spawn(self):
        """Starts it without waiting (a successor is ready when its log says so)."""
        self.starts += 1
        self.proc = self.h.spawn(self.name, self.argv(), env=self.env)
        return self


# ---------------------------------------------------------------------------
# lbd's log lines


def log_ts(line):
    """The wall-clock time (epoch seconds) of an lbd log line's ts=, or None."""
    m = re.search(r"\bts=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if not m:
        return None
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in m.group(1) else "%Y-%m-%dT%H:%M:%S"
    return datetime.datetime.strptime(m.group(1), fmt).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def kv_int(line, key):
    """The integer of `key=N` in a log line, or None."""
    m = re.search(r"\b%s=(\d+)" % re.escape(key), line)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# Sockets and the processes holding them (/proc)


def _tcp_rows():
    """The columns of each row of /proc/net/tcp and tcp6."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9:
                yield cols


def tcp_sockets():
    """{inode: (state, local port, remote port)} of every TCP socket on the host
    (/proc/net/tcp and tcp6; state as there, in hex: "01" established, "0A" listening)."""
    return {cols[9]: (cols[3], int(cols[1].rsplit(":", 1)[1], 16),
                      int(cols[2].rsplit(":", 1)[1], 16)) for cols in _tcp_rows()}


def rx_queue_to_port(port):
    """The largest receive queue (bytes not read yet) of an established TCP
    socket connected to `port` on this host (tx_queue:rx_queue, in hex)."""
    return max([int(cols[4].split(":")[1], 16) for cols in _tcp_rows()
                if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port] or [0])


def fd_links(pid):
    """[what each open fd of pid links to] ("socket:[INODE]", a path, ...)
    from /proc/PID/fd, an fd closed meanwhile left out; None when the
    directory cannot be read (no such process)."""
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    out = []
    for fd in fds:
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            continue
    return out


def _socket_inodes(pid):
    """[inode] of every socket pid holds (one per fd); [] when there is no such process."""
    return [link[8:-1] for link in fd_links(pid) or () if link.startswith("socket:[")]


def pids_holding(inodes, pids):
    """Those of pids that hold a socket of one of these inodes (/proc/PID/fd)."""
    inodes = set(inodes)
    return [pid for pid in pids if any(i in inodes for i in _socket_inodes(pid))]


def sockets_to_port_by_pid(pids, port):
    """{pid: established TCP sockets the process holds whose peer port is `port`}
    (from /proc/net/tcp* and /proc/PID/fd)."""
    inodes = {ino for ino, (state, _, remote) in tcp_sockets().items()
              if state == "01" and remote == port}
    return {pid: sum(1 for i in _socket_inodes(pid) if i in inodes) for pid in pids}


def unix_listener_pids(path, pids):
    """Those of pids that hold a unix socket listening at `path` (from
    /proc/net/unix and /proc/PID/fd); [] when nobody listens there."""
    inodes = set()
    try:
        with open("/proc/net/unix") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        rows = []
    for row in rows:
        cols = row.split()
        # Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening
        if len(cols) >= 8 and cols[7] == path and int(cols[3], 16) & 0x10000:
            inodes.add(cols[6])
    return pids_holding(inodes, pids)
