#!/usr/bin/python3
"""The status page on the probe port (--http): GET /, /status.json, /events.

A real etcd, real backends and the real lbd and lbctl, and Debian's
headless Chromium driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages on fds 3 and 4, so no websocket
library and no network): the page lists the three backends of two pools
with their state; `lbctl drain` shows on the open page within 2 s without a
reload, and in its events panel; a backend id with every punctuation the
schema allows (`a.b:c-d`) renders literally; the page runs under its strict
Content-Security-Policy (no violation reported) and fits a phone's width;
with JavaScript off it shows its noscript message.  A screenshot of the
page is kept under the build directory (`figure:` line).

Without a browser: /status.json has lbctl's numbers and lbd's security
headers; /events streams one `data:` JSON line per event (a drain arrives
within 2 s) and a heartbeat comment every 15 s; at most 16 streams (8 per
address) while /healthz still answers; a client that leaves is forgotten
(its subscription too) and one that stops reading is dropped at its
queue's bound instead of growing lbd.
"""

import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, ask_many, backend_key,  # noqa: E402
                    backend_value, bin_dir, figure, main, open_conn, scaled, wait_until)

PREFIX = "/lbtest-status/"
ODD_ID = "a.b:c-d"  # every punctuation mark the key schema allows in an id
DRAIN_BOUND_S = 2.0
MAX_STREAMS, MAX_STREAMS_PER_PEER = 16, 8
HEARTBEAT_S = 15.0
CHROMIUM = shutil.which("chromium")


def http(port, path, method="GET", timeout=3.0):
    """(status, headers dict with lower-case names, body bytes)."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class SseClient:
    """GET /events on a raw socket from `source` (a loopback address); a thread reads the
    stream (unless reading=False) and splits it into messages."""

    def __init__(self, port, source="127.0.0.1", reading=True, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((source, 0))
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: lbd\r\nAccept: text/event-stream\r\n\r\n")
        self.raw = b""
        self.closed = False
        self.lock = threading.Lock()
        self.status = None
        self.headers = {}
        if not reading:
            return
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("/events closed before its headers: %r" % head)
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, _, v in (ln.partition(":") for ln in lines[1:])}
        self.raw = rest
        if self.status == 200:
            self.sock.settimeout(None)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        else:
            self.close()

    def _read(self):
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            with self.lock:
                if not chunk:
                    self.closed = True
                    return
                self.raw += chunk

    def text(self):
        """The body with the chunked framing taken out."""
        with self.lock:
            raw = self.raw
        out, i = [], 0
        while True:
            j = raw.find(b"\r\n", i)
            if j < 0:
                break
            size = int(raw[i:j].split(b";")[0] or b"0", 16)
            if size == 0 or len(raw) < j + 2 + size + 2:
                break
            out.append(raw[j + 2:j + 2 + size])
            i = j + 2 + size + 2
        return b"".join(out).decode("utf-8")

    def events(self):
        """The JSON of every `data:` line so far."""
        return [json.loads(line[5:]) for line in self.text().split("\n") if line.startswith("data:")]

    def close(self):
        # shutdown() first: close() alone does not end a socket another thread is reading.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Chromium:
    """Headless Chromium driven through the DevTools protocol over a pipe (fd 3 to the
    browser, fd 4 from it, messages ending in NUL).  A temporary profile; stopped by
    Browser.close, then by its process group's id if it lingers."""

    def __init__(self, workdir):
        self.profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()

        def child():
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        self.log = open(os.path.join(workdir, "chromium.log"), "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-pipe", "--user-data-dir=" + self.profile, "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-sync",
             "--disable-background-networking", "--disable-component-update",
             "--disable-default-apps", "--password-store=basic", "--hide-scrollbars",
             "--window-size=1400,900", "about:blank"],
            pass_fds=(3, 4), preexec_fn=child, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=self.log, start_new_session=True)
        os.close(to_r)
        os.close(from_w)
        self.buf = b""
        self.seq = 0
        self.events = []  # protocol events seen while waiting for answers
        self.session = None

    def _recv(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.from_r], [], [], max(0.0, left))
            if not r:
                raise AssertionError("Chromium did not answer in time")
            chunk = os.read(self.from_r, 1 << 20)
            if not chunk:
                raise AssertionError("Chromium closed its DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=True, timeout=15.0):
        self.seq += 1
        msg = {"id": self.seq, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if m.get("id") == self.seq:
                if "error" in m:
                    raise AssertionError("%s: %s" % (method, m["error"]))
                return m.get("result", {})
            self.events.append(m)

    def open_page(self, url, scripts=True, width=1400, height=900, mobile=False):
        """A new tab showing url, attached (flat session)."""
        self.session = None
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        if not scripts:
            self.call("Emulation.setScriptExecutionDisabled", {"value": True})
        self.call("Page.navigate", {"url": url})
        return target

    def eval(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise AssertionError("page JS failed: %s" % r["exceptionDetails"])
        return r["result"].get("value")

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def console_errors(self):
        """Console and log entries at error level seen so far (CSP violations land here)."""
        out = []
        for m in self.events:
            p = m.get("params", {})
            if m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
            if m.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(" ".join(str(a.get("value", "")) for a in p.get("args", [])))
            if m.get("method") == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails", {}).get("text", "")))
        return out

    def stop(self):
        try:
            self.session = None
            self.call("Browser.close", session=False, timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Its helpers (zygote, renderers) share its process group: none may outlive it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for fd in (self.to_w, self.from_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# Row state and event list as the page shows them, read in the page.
ROWS_JS = """(() => Array.from(document.querySelectorAll('tr[data-id]')).map(tr => ({
  pool: tr.dataset.pool, id: tr.dataset.id,
  id_text: tr.querySelector('td.id').textContent, id_html: tr.querySelector('td.id').innerHTML,
  state: tr.querySelector('td.state').dataset.state,
  state_text: tr.querySelector('td.state .badge').textContent})))()"""
EVENTS_JS = """(() => Array.from(document.querySelectorAll('#events li[data-type]')).map(li => ({
  type: li.dataset.type, pool: li.dataset.pool, id: li.dataset.id || null,
  text: li.textContent})))()"""


class StatusPage(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()
        cls.backends = {("web", "b1"): Backend(cls.h, "b1"), ("web", "b2"): Backend(cls.h, "b2"),
                        ("db", ODD_ID): Backend(cls.h, ODD_ID)}
        for (pool, bid), b in cls.backends.items():
            cls.etcd.put(backend_key(PREFIX, pool, bid), backend_value(b.addr))
        cls.etcd.put(PREFIX + "pools/bulk/config", json.dumps({"health": {"type": "none"}}))
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX, ["web", "db", "bulk"],
                      extra_args=["--shutdown-grace", "1s"]).start()
        cls.port = cls.lbd.http_port

        def all_up():
            bs = cls.lbd.backends()
            return len(bs) == 3 and all(b["health"] == "up" for b in bs.values())
        wait_until(all_up, scaled(15), "three backends up")
        ask_many(cls.lbd.pool_port("web"), 6)
        ask_many(cls.lbd.pool_port("db"), 2)
        # Open from the start, read at the end: a heartbeat comes every 15 s.
        cls.heartbeat_client = SseClient(cls.port)
        cls.heartbeat_opened = time.monotonic()

    @classmethod
    def tearDownWorld(cls):
        cls.heartbeat_client.close()
        # lbd stops with a stream open (suspended, waiting for events): it ends the
        # stream and exits 0.
        last = SseClient(cls.port)
        try:
            cls.lbd.stop(expect_rc=0)
            wait_until(lambda: last.closed, 5, "the open stream ended by lbd's exit")
        finally:
            last.close()

    def streams(self):
        return int(self.lbd.metric("lbd_http_event_streams"))

    def drain(self, pool, bid, on=True):
        rc, out, err = self.lbd.ctl("drain" if on else "undrain", pool, bid)
        self.assertEqual(rc, 0, err)

    def test_1_status_json_has_lbctls_numbers(self):
        status, hdrs, body = http(self.port, "/status.json")
        self.assertEqual(status, 200)
        self.assertEqual(hdrs["content-type"], "application/json")
        self.assertEqual(hdrs["cache-control"], "no-store")
        self.assertEqual(hdrs["x-content-type-options"], "nosniff")
        doc = json.loads(body)
        self.assertEqual(doc["lbd"]["ready"], True)
        self.assertEqual([p["name"] for p in doc["pools"]], ["web", "db", "bulk"])
        for p in doc["pools"]:
            self.assertEqual(set(p), {"name", "listen", "algorithm", "backends", "eligible",
                                      "active_connections", "total_connections", "queued",
                                      "panic", "zone_local"})
            self.assertIsNone(p["zone_local"])  # no --zone: zone affinity off
            self.assertEqual(p["queued"], 0)
        by_pool = {p["name"]: p for p in doc["pools"]}
        self.assertEqual(by_pool["web"]["backends"], 2)
        self.assertGreaterEqual(by_pool["web"]["total_connections"], 6)
        ours = {(b["pool"], b["id"]): b for b in doc["backends"]}
        self.assertEqual(set(ours), set(self.backends))
        theirs = {(b["pool"], b["id"]): b for b in self.lbd.backends().values()}
        for k, b in ours.items():
            self.assertEqual(b["state"], "up")
            # The same numbers as lbctl, field for field (the traffic above has ended).
            for field, value in theirs[k].items():
                self.assertIn(field, b)
                self.assertEqual(b[field], value, "%s %s" % (k, field))
        self.assertGreater(sum(b["total_connections"] for b in ours.values()), 0)
        self.assertGreater(sum(b["bytes_in"] for b in ours.values()), 0)
        # Nothing of etcd's whereabouts (let alone credentials) is on the page's data.
        self.assertNotIn(self.etcd.url.encode(), body)
        self.assertNotIn(b"etcd", body)

    def test_2_page_assets_and_headers(self):
        status, hdrs, html = http(self.port, "/")
        self.assertEqual(status, 200)
        self.assertEqual(hdrs["content-type"], "text/html; charset=utf-8")
        csp = hdrs["content-security-policy"]
        self.assertIn("script-src 'self'", csp)
        self.assertIn("default-src 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertNotIn("unsafe-eval", csp)
        self.assertEqual(hdrs["x-content-type-options"], "nosniff")
        self.assertEqual(hdrs["x-frame-options"], "DENY")
        self.assertEqual(http(self.port, "/status")[2], html)
        text = html.decode()
        # Self-contained: nothing from another origin, no inline script or style.
        self.assertNotIn("http://", text.replace('href="/', ""))
        self.assertNotIn("https://", text)
        self.assertNotIn("<style", text)
        self.assertNotIn(" style=", text)
        self.assertIn('<script src="/status.js" defer></script>', text)
        self.assertIn("<noscript>", text)
        status, hdrs, js = http(self.port, "/status.js")
        self.assertEqual((status, hdrs["content-type"]), (200, "text/javascript; charset=utf-8"))
        status, hdrs, css = http(self.port, "/status.css")
        self.assertEqual((status, hdrs["content-type"]), (200, "text/css; charset=utf-8"))
        # Data reaches the DOM as text only, and nothing changes lbd from the page.
        for bad in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write",
                    b"eval(", b"Function(", b"method: 'POST'", b"method:'POST'"):
            self.assertNotIn(bad, js)
        self.assertLess(len(html) + len(js) + len(css), 64 * 1024, "the page stays small")
        status, hdrs, _ = http(self.port, "/status.json", method="HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(http(self.port, "/status.json", method="POST")[0], 405)
        self.assertEqual(http(self.port, "/nope")[0], 404)

    def test_3_browser_shows_a_drain_live(self):
        if not CHROMIUM:
            self.skipTest("chromium is not installed (apt-get install chromium)")
        chrome = Chromium(self.h.dir)
        try:
            self._browser(chrome)
        finally:
            chrome.stop()
        wait_until(lambda: self.streams() == 1, 5, "the browser's event stream closed")

    def _browser(self, chrome):
        url = "http://127.0.0.1:%d/" % self.port
        chrome.open_page(url)

        def rows():
            return {(r["pool"], r["id"]): r for r in chrome.eval(ROWS_JS) or []}
        wait_until(lambda: set(rows()) == set(self.backends), 10, "the page lists every backend")
        wait_until(lambda: chrome.eval("document.getElementById('link').dataset.link") == "live",
                   5, "the page's event stream open")
        for k, r in rows().items():
            self.assertEqual((r["state"], r["state_text"]), ("up", "up"), k)
            self.assertEqual(r["id_text"], k[1])
        odd = rows()[("db", ODD_ID)]
        self.assertEqual(odd["id_html"], ODD_ID, "the id is text, not markup")
        chrome.eval("window.__sameDocument = 42")

        t0 = time.monotonic()
        self.drain("web", "b2")
        wait_until(lambda: rows()[("web", "b2")]["state"] in ("draining", "drained"),
                   DRAIN_BOUND_S, "the drain on the open page")
        shown = time.monotonic() - t0
        figure("status page: lbctl drain to page shows it", "%.3f" % shown, "s")
        self.assertLess(shown, DRAIN_BOUND_S)
        self.assertEqual(chrome.eval("window.__sameDocument"), 42, "the page was not reloaded")
        self.assertEqual(rows()[("web", "b1")]["state"], "up")
        evs = chrome.eval(EVENTS_JS)
        drained = [e for e in evs if e["pool"] == "web" and e["id"] == "b2"]
        self.assertTrue(drained, "the drain in the events panel: %r" % evs)
        self.assertIn("web/b2", drained[0]["text"])
        wait_until(lambda: rows()[("web", "b2")]["state"] == "drained", 3, "b2 drained")
        wait_until(lambda: "2 of 3 backends up" in chrome.eval(
            "document.getElementById('summary').textContent"), 3, "the next poll's summary")

        # Rates come from successive snapshots, in the page.
        ask_many(self.lbd.pool_port("web"), 20)
        b1_rate = "document.querySelector('tr[data-id=\"b1\"] td.conn_rate').textContent"
        wait_until(lambda: chrome.eval(b1_rate) not in ("", "\u2013", "0.0"), 5,
                   "b1's connection rate on the page")

        # Clients waiting for a slot (db at max_conns 1, queue_timeout) show
        # as the pool's queue badge and count; gone once they are.
        waiting = self._queue_on_db(2)
        queue_js = ("(() => { const b = document.querySelector("
                    "'section[data-pool=\"db\"] .badge.queue');"
                    " return b && !b.hidden ? b.dataset.queued : null; })()")
        wait_until(lambda: chrome.eval(queue_js) == "2", 5, "db's queue of 2 on the page")
        # ... and the policy event says what changed.
        changed = [e["text"] for e in chrome.eval(EVENTS_JS) if e["pool"] == "db"
                   and "max_conns 0 -> 1" in e["text"]]
        self.assertTrue(changed, "db's policy event: %r" % chrome.eval(EVENTS_JS))
        self.assertIn("queue_timeout 0s -> 30s", changed[0])

        # Screenshot of what an operator sees, kept as a test artifact.
        out_dir = os.path.join(bin_dir(), "test-artifacts")
        os.makedirs(out_dir, exist_ok=True)
        shot = os.path.join(out_dir, "status-page.png")
        chrome.screenshot(shot)
        self.assertGreater(os.path.getsize(shot), 10000)
        figure("status page screenshot", shot)
        self._queue_off_db(waiting)
        wait_until(lambda: chrome.eval(queue_js) is None, 5, "db's queue gone from the page")

        self.assertEqual([e for e in chrome.console_errors() if e], [],
                         "the page runs under its CSP without an error")

        # A phone: one column, nothing wider than the screen.
        chrome.open_page(url, width=390, height=844, mobile=True)
        wait_until(lambda: len(rows()) == 3, 10, "the page on a phone")
        self.assertLessEqual(chrome.eval("document.documentElement.scrollWidth"), 390)
        phone = os.path.join(out_dir, "status-page-phone.png")
        chrome.screenshot(phone)
        figure("status page screenshot (phone)", phone)

        # A wall screen: larger type with ?large.
        chrome.open_page(url + "?large", width=1920, height=1080)
        wait_until(lambda: len(rows()) == 3, 10, "the page on a wall screen")
        size = chrome.eval("parseFloat(getComputedStyle(document.documentElement).fontSize)")
        self.assertGreaterEqual(size, 20)
        chrome.screenshot(os.path.join(out_dir, "status-page-wall.png"))

        # JavaScript off: the noscript message, pointing at the data.
        chrome.open_page(url, scripts=False)
        wait_until(lambda: chrome.eval("document.readyState") == "complete", 10, "page loaded")
        note = chrome.eval("(document.querySelector('p.noscript') || {}).textContent || ''")
        self.assertIn("JavaScript", note)
        self.assertIn("/status.json", note)
        self.assertEqual(chrome.eval("document.querySelectorAll('tr[data-id]').length"), 0)
        self.drain("web", "b2", on=False)

    def _queue_on_db(self, n):
        """db at max_conns 1 with a queue: one client held, n waiting."""
        self.etcd.put(PREFIX + "pools/db/config", json.dumps({"max_conns": 1,
                                                              "queue_timeout": "30s"}))
        wait_until(lambda: "pool=db algorithm=wrr connect_timeout_ms=3000 idle_timeout_ms="
                   "3600000 retries=2 max_conns=1 queue_timeout_ms=30000" in self.lbd.log_text(),
                   5, "db's queueing policy applied")
        port = self.lbd.pool_port("db")
        held = [open_conn(port)[0]]
        for _ in range(n):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(lambda: self.lbd.metric("lbd_pool_queue_length", pool="db") == n, 5,
                   "%d clients queued in db" % n)
        return held

    def _queue_off_db(self, held):
        for s in held:
            s.close()
        self.etcd.delete(PREFIX + "pools/db/config")
        wait_until(lambda: self.lbd.metric("lbd_pool_queue_length", pool="db") == 0, 5,
                   "db's queue empty")

    def test_4_events_stream_a_drain(self):
        before = self.streams()
        c = SseClient(self.port)
        try:
            self.assertEqual(c.status, 200)
            self.assertEqual(c.headers["content-type"], "text/event-stream; charset=utf-8")
            self.assertEqual(c.headers["cache-control"], "no-store")
            wait_until(lambda: "retry: 2000" in c.text(), 2, "the stream's first bytes")
            t0 = time.monotonic()
            self.drain("db", ODD_ID)

            def ours():
                return [e for e in c.events() if e.get("id") == ODD_ID]
            wait_until(lambda: any(e["state"] in ("draining", "drained") for e in ours()),
                       DRAIN_BOUND_S, "the drain on /events")
            figure("/events: lbctl drain to data line", "%.3f" % (time.monotonic() - t0), "s")
            ev = [e for e in ours() if e["state"] in ("draining", "drained")][0]
            self.assertEqual(set(ev), {"type", "pool", "id", "state", "detail", "unix_ms",
                                       "backend"})
            self.assertEqual(ev["pool"], "db")
            self.assertIn(ev["type"], ("backend_changed", "drained"))
            self.assertIsInstance(ev["unix_ms"], int)
            self.assertLess(abs(ev["unix_ms"] / 1000 - time.time()), 10)
            self.assertEqual(ev["backend"]["id"], ODD_ID)
            self.assertTrue(ev["backend"]["drain"])
            self.drain("db", ODD_ID, on=False)
            wait_until(lambda: ours()[-1]["state"] == "up", DRAIN_BOUND_S, "the undrain")
            self.assertEqual(self.streams(), before + 1)
        finally:
            c.close()
        # The client went away while its stream was idle: lbd notices and lets go.
        wait_until(lambda: self.streams() == before, 2, "the closed stream forgotten")

    def test_5_stream_caps(self):
        before = self.streams()  # the heartbeat client, from 127.0.0.1
        opened = []
        try:
            for _ in range(MAX_STREAMS_PER_PEER - before):
                opened.append(SseClient(self.port, "127.0.0.1"))
            self.assertTrue(all(c.status == 200 for c in opened))
            refused = SseClient(self.port, "127.0.0.1")
            self.assertEqual(refused.status, 503, "the 9th stream from one address")
            for _ in range(MAX_STREAMS_PER_PEER):
                opened.append(SseClient(self.port, "127.0.0.2"))
            self.assertTrue(all(c.status == 200 for c in opened))
            self.assertEqual(self.streams(), MAX_STREAMS)
            refused = SseClient(self.port, "127.0.0.3")
            self.assertEqual(refused.status, 503, "the 17th stream")
            # Probes still get in, from the address whose streams are at their cap too.
            t0 = time.monotonic()
            self.assertEqual(http(self.port, "/healthz", timeout=1)[0], 200)
            self.assertEqual(http(self.port, "/status.json", timeout=1)[0], 200)
            self.assertLess(time.monotonic() - t0, 1.0)
            self.assertGreaterEqual(self.lbd.metric("lbd_http_event_streams_refused_total"), 2)
            self.assertIn("event streams refused", self.lbd.log_text())
        finally:
            for c in opened:
                c.close()
        wait_until(lambda: self.streams() == before, 3, "the streams closed")
        again = SseClient(self.port, "127.0.0.3")
        self.assertEqual(again.status, 200, "room again once they left")
        again.close()

    def test_7_a_client_that_does_not_read_is_dropped(self):
        # Last: a burst past the queue's bound ends every stream it hits, not only this one.
        before = self.streams()
        stuck = SseClient(self.port, "127.0.0.4", reading=False, rcvbuf=4096)
        wait_until(lambda: self.streams() == before + 1, 2, "the stuck stream open")
        # 1,500 backends join at once: ~1 MB of events, past a stream's 256 KiB queue.
        items = {backend_key(PREFIX, "bulk", "x%04d" % i): backend_value("127.0.0.1:9")
                 for i in range(1500)}
        self.etcd.put_many(items)
        wait_until(lambda: self.streams() <= before, 5, "the stuck stream dropped")
        # What it was sent ends: lbd closed the connection instead of queueing more.
        stuck.sock.settimeout(5)
        total = 0
        while True:
            try:
                chunk = stuck.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            total += len(chunk)
        stuck.close()
        self.assertLess(total, 1 << 20, "at most the socket buffers and the 256 KiB queue")
        again = SseClient(self.port)
        self.assertEqual(again.status, 200, "a new stream after the burst")
        again.close()
        figure("/events: bytes a stalled client got before it was dropped", total, "B")
        self.etcd.delete_prefix(PREFIX + "pools/bulk/backends/")

    def test_6_heartbeat(self):
        left = HEARTBEAT_S + 1.5 - (time.monotonic() - self.heartbeat_opened)
        wait_until(lambda: ": heartbeat" in self.heartbeat_client.text(),
                   max(left, 0) + 1.0, "a heartbeat within 15 s")
        self.assertFalse(self.heartbeat_client.closed)


if __name__ == "__main__":
    main()
