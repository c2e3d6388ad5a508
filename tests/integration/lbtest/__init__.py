"""Harness for lbd's integration tests: real etcd, real backends, real binaries.

Every test starts what it needs on free 127.0.0.1 ports and stops it again,
by PID, even when it fails:

    h = Harness("e2e")                       # temp dir + process registry
    etcd = Etcd(h).start()                   # Debian's etcd, temp data dir
    b1 = Backend(h, "b1")                    # answers "b1\\n", then echoes
    reg = Registrar(h, etcd, "/lbtest/", "web", "b1", b1.addr)
    lbd = Lbd(h, etcd.url, "/lbtest/", ["web"]).start()
    assert ask(lbd.pool_port("web")) == "b1"
    h.cleanup()                              # SIGTERM -> deadline -> SIGKILL

One module per concern; this package re-exports every name, so tests
write `import lbtest` or `from lbtest import X`:

    procs      processes and waiting: Proc, Harness, run, wait_until,
               free_port, port_is_open, scaled, the binaries; ForeignProc
               (a process tracked by PID that is not ours: an lbd another
               lbd started on SIGUSR2), set_subreaper, proc_state, raise_nofile
    etcd       Etcd, EtcdCluster, EtcdClient, EtcdError
    tls        TlsFiles
    backends   Backend (id line then echo; kill, restart; PROXY header mode),
               ThreadedServer (a test's own backend: a thread per connection)
    lbd        Lbd, lbctl, Registrar, the key schema, parse_prometheus
    clients    ask, ask_many, open_conn, echo, ClientLoop, percentile,
               http_request, client_of, parse_kv (access lines), ended
    upgrade    live upgrades: UpgradeLbd (--upgrade-socket, a successor on the
               same ports), workers_args, log_ts, kv_int (lbd log lines),
               tcp_sockets, rx_queue_to_port, pids_holding, sockets_to_port_by_pid,
               unix_listener_pids, fd_links (who holds which socket, from /proc)
    testcase   HarnessTestCase, main
    pools      PoolTestCase (one etcd, one lbd: add_backends, wait_active, held)

Waiting is always on a condition with a deadline (wait_until), never a
fixed sleep.  Start-up deadlines are multiplied by LBTEST_TIMEOUT_SCALE
(the sanitizer build sets it); behavioural deadlines a test asserts are not.

Binaries are found under --bin-dir, or $LB_BUILD_DIR, or build/ at the
repository root: <dir>/balancer/lbd and <dir>/ctl/lbctl.

Only the standard library and grpc (Debian's python3-grpcio, used by the
interop test) are needed: run the tests with /usr/bin/python3.
"""

from .backends import (HELLO, PROXY_V2_SIGNATURE, Backend, ThreadedServer, parse_proxy_v1,
                       parse_proxy_v2)
from .clients import (ClientLoop, ask, ask_many, client_of, echo, ended, http_request, open_conn,
                      parse_kv, percentile, watch_closes, recv_line_bytes, close_all, figure,
                      read_line, recv_all, silent_connections)
from .etcd import Etcd, EtcdClient, EtcdCluster, EtcdError, prefix_range_end
from .lbd import (Lbd, Registrar, backend_key, backend_value, backends_from_json, etcd_pool,
                  lbctl, lbd_pool, override_key, parse_prometheus)
from .procs import (REPO_ROOT, TIMEOUT_SCALE, ForeignProc, Harness, Proc, WaitTimeout, bin_dir,
                    free_port, lbctl_binary, lbd_binary, port_is_open, proc_state, raise_nofile,
                    reserve_port, run, scaled, set_subreaper, wait_until)
from .testcase import HarnessTestCase, case_failed, main
from .pools import PoolTestCase
from .tls import TlsFiles
from .upgrade import (UpgradeLbd, fd_links, kv_int, log_ts, pids_holding, rx_queue_to_port,
                      sockets_to_port_by_pid, tcp_sockets, unix_listener_pids, workers_args)

__all__ = [
    # procs
    "REPO_ROOT", "TIMEOUT_SCALE", "ForeignProc", "Harness", "Proc", "WaitTimeout", "bin_dir",
    "free_port", "lbctl_binary", "lbd_binary", "port_is_open", "proc_state", "raise_nofile",
    "reserve_port", "run", "scaled", "set_subreaper", "wait_until",
    # etcd
    "Etcd", "EtcdClient", "EtcdCluster", "EtcdError", "prefix_range_end",
    # tls
    "TlsFiles",
    # backends
    "HELLO", "PROXY_V2_SIGNATURE", "Backend", "ThreadedServer", "parse_proxy_v1",
    "parse_proxy_v2",
    # lbd
    "Lbd", "Registrar", "backend_key", "backend_value", "backends_from_json", "etcd_pool",
    "lbctl", "lbd_pool", "override_key", "parse_prometheus",
    # clients
    "ClientLoop", "ask", "ask_many", "echo", "http_request", "open_conn", "percentile",
    "read_line", "watch_closes", "recv_line_bytes", "close_all", "figure", "client_of",
    "parse_kv", "ended", "recv_all", "silent_connections",
    # upgrade
    "UpgradeLbd", "fd_links", "kv_int", "log_ts", "pids_holding", "sockets_to_port_by_pid",
    "tcp_sockets", "rx_queue_to_port", "unix_listener_pids", "workers_args",
    # testcase
    "HarnessTestCase", "case_failed", "main", "PoolTestCase",
]
