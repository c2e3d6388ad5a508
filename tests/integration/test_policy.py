#!/usr/bin/python3
"""Policy and config that cannot be mistyped: real etcd, real lbd, real lbctl.

ConfigTypos (no etcd): a key of lbd's --config file that is not a setting
(`shutdown_grace` for `shutdown-grace`) is exit 2 with one line naming the
file, the key and the setting meant; an unknown flag names the flag meant.
`lbd --check` says "configuration OK" with a summary and exits 0 without
binding a port or connecting to etcd (a socket the test holds at the
--etcd address sees no connection, the pool's port may even be taken),
or exits 2 with one line per problem.

Policies (etcd + lbd serving pool web):
  1. `lbctl policy set` writes a good policy; lbd logs "policy applied"
     and `lbctl pools` shows its algorithm; lbctl printed the change.
  2. `lbctl policy set` of a policy with "intervl" is refused: exit 1,
     "did you mean interval?", nothing written, lbd unchanged.
  3. A bad policy put straight into etcd (as etcdctl would): lbd logs the
     key and the problem once, counts it as a bad value and keeps the last
     good policy; `lbctl policy get` warns; a good set then applies.  An
     unknown field ("conect_timeout") is ignored as DESIGN.md has it (a
     policy written for a newer lbd still applies): logged once with the
     key and "did you mean connect_timeout?", counted in
     lbd_etcd_unknown_fields_total, and the rest applies.
  4. `lbctl policy get` round-trips what `set` wrote (raw and pretty); the
     same set again is "unchanged" and writes nothing.
  5. `lbctl policy validate` from stdin: 0 for a good policy, 1 with one
     line per problem (clamps included) for a bad one, -o json for scripts.
  6. lbctl and lbd share one validator: for each policy of a table, lbctl
     validate accepts it exactly when lbd applies it from etcd without a
     word, and lbd refuses exactly what lbctl refuses for a reason other
     than unknown fields (those lbd ignores, with a warning).
"""

import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, backend_key,  # noqa: E402
                    backend_value, free_port, lbctl_binary, lbd_binary, run, scaled,
                    wait_until)

PREFIX = "/lbtest-policy/"
POOL = "web"
KEY = "%spools/%s/config" % (PREFIX, POOL)


def stderr_lines(err, prefix):
    return [ln for ln in err.splitlines() if ln.startswith(prefix)]


class ConfigTypos(HarnessTestCase):
    def write(self, name, obj):
        path = self.h.path(name)
        with open(path, "w") as f:
            json.dump(obj, f)
        return path

    def base_config(self, **extra):
        cfg = {"etcd": "http://127.0.0.1:%d" % free_port(),
               "pool": ["web=127.0.0.1:%d" % free_port()],
               "admin": "127.0.0.1:%d" % free_port(),
               "http": "127.0.0.1:%d" % free_port()}
        cfg.update(extra)
        return cfg

    def test_config_key_typo_is_exit_2_naming_file_key_and_suggestion(self):
        path = self.write("typo.json", self.base_config(shutdown_grace="5s"))
        rc, out, err = run([lbd_binary(), "--config", path], timeout=10)
        self.assertEqual(rc, 2, err)
        lines = stderr_lines(err, "lbd: ")
        self.assertEqual(len(lines), 1, err)
        for needle in (path, '"shutdown_grace"', "did you mean shutdown-grace?"):
            self.assertIn(needle, lines[0])
        # --check says the same, the same way
        rc, out, err = run([lbd_binary(), "--check", "--config", path], timeout=10)
        self.assertEqual(rc, 2, err)
        self.assertIn("did you mean shutdown-grace?", err)
        self.assertNotIn("configuration OK", out)
        # a key close to nothing gets no guess, a pointer instead
        path = self.write("far.json", self.base_config(frobnicate=1))
        rc, out, err = run([lbd_binary(), "--config", path], timeout=10)
        self.assertEqual(rc, 2, err)
        self.assertIn('unknown key "frobnicate"', err)
        self.assertNotIn("did you mean", err)

    def test_flag_typo_names_the_flag_meant(self):
        rc, out, err = run([lbd_binary(), "--pool", "web=127.0.0.1:1", "--shutdown_grace", "5s"],
                           timeout=10)
        self.assertEqual(rc, 2, err)
        self.assertIn("unknown option --shutdown_grace (did you mean --shutdown-grace?)", err)
        rc, out, err = run([lbd_binary(), "--log-level", "wran"], timeout=10)
        self.assertEqual(rc, 2, err)
        self.assertIn("did you mean warn?", err)

    def test_upgrade_socket_on_a_plain_file_is_refused_and_kept(self):
        path = self.h.path("not-a-socket")
        with open(path, "w") as f:
            f.write("precious\n")
        base = [lbd_binary(), "--upgrade-socket", path, "--pool",
                "web=127.0.0.1:%d" % free_port(), "--etcd", "http://127.0.0.1:%d" % free_port(),
                "--admin", "127.0.0.1:0", "--http", "127.0.0.1:0"]
        for argv in (base + ["--check"], base):
            rc, out, err = run(argv, timeout=10)
            self.assertNotEqual(rc, 0, err)
            self.assertIn("the path exists and is not a socket", err)
        with open(path) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_lbctl_usage_errors_give_one_hint(self):
        for argv, want in ((["weight", "web", "b1", "-1"], "a negative number"),
                           (["weight", "web", "b1", " 5"], "not a whole number from 0 to 1000"),
                           (["weight", "web", "b1", "+5"], "not a whole number from 0 to 1000"),
                           (["weight", "web", "b1", "1001"], "not a whole number from 0 to 1000"),
                           (["pools", "--local"], "unknown option --local"),
                           (["policy", "get", "--bogus"], "unknown option --bogus"),
                           (["register", "--bogus"], "unknown option --bogus"),
                           # a command's own flag written before the command: where it goes
                           (["--etcd", "http://127.0.0.1:2379", "policy", "get", "web"],
                            "--etcd is a flag of 'lbctl policy': give it after the command"),
                           (["--etcd=http://127.0.0.1:2379", "register", "--pool", "web"],
                            "--etcd is a flag of 'lbctl register'"),
                           (["--local", "drain", "web", "b1"], "--local is a flag of 'lbctl drain'"),
                           (["--wait", "drain", "web", "b1", "-o", "json"],
                            "--wait is a flag of 'lbctl drain'")):
            cmd = next(a for a in argv if not a.startswith("-") and "://" not in a)
            with self.subTest(argv=argv):
                rc, out, err = run([lbctl_binary()] + argv, timeout=10)
                self.assertEqual(rc, 2, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                self.assertIn(want, err)
                self.assertEqual(err.count("(see "), 1, err)
                self.assertIn("(see lbctl %s --help)" % cmd, err)
        # a flag no command takes is still unknown, wherever it is (short words around it too)
        for argv in (["--bogus", "drain", "web", "b1"], ["--bogus", "a"], ["--bogus", ""]):
            rc, out, err = run([lbctl_binary()] + argv, timeout=10)
            self.assertEqual(rc, 2, err)
            self.assertIn("unknown option --bogus (see lbctl --help)", err)

    def test_check_good_config_binds_and_connects_nothing(self):
        # etcd's address is a socket the test holds: lbd --check must not connect to it
        etcd_sock = socket.socket()
        etcd_sock.bind(("127.0.0.1", 0))
        etcd_sock.listen(8)
        etcd_sock.setblocking(False)
        # the pool's port is taken: --check does not bind, so it cannot tell (and says so)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(etcd_sock.close)
        self.addCleanup(taken.close)
        token = self.h.path("admin.token")
        with open(token, "w") as f:
            f.write("sekrit\n")
        os.chmod(token, 0o600)
        etcd_url = "http://127.0.0.1:%d" % etcd_sock.getsockname()[1]
        cfg = self.base_config(etcd=[etcd_url + "/,", "http://127.0.0.2:2379"],
                               pool=["web=127.0.0.1:%d" % taken.getsockname()[1],
                                     "db=127.0.0.1:%d,accept-proxy" % free_port()])
        cfg["admin-token-file"] = token
        path = self.write("good.json", cfg)
        rc, out, err = run([lbd_binary(), "--check", "--config", path, "--workers", "2"],
                           timeout=10)
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith("configuration OK\n"), out)
        self.assertIn("pool              web on 127.0.0.1:%d" % taken.getsockname()[1], out)
        self.assertIn("(accept-proxy)", out)
        self.assertIn("token", out)
        self.assertIn("workers           2", out)
        # the endpoints as lbd will use them, whatever the list looked like
        self.assertIn("etcd              %s,http://127.0.0.2:2379, prefix /" % etcd_url, out)
        self.assertNotIn("sekrit", out + err)
        with self.assertRaises(BlockingIOError):
            etcd_sock.accept()

    def test_check_bad_config_is_exit_2_with_one_line_per_problem(self):
        port = free_port()
        rc, out, err = run([lbd_binary(), "--check", "--pool", "web=127.0.0.1:%d" % port,
                            "--admin", "127.0.0.1:%d" % port,
                            "--etcd-user-file", self.h.path("missing.user"),
                            "--admin-tls-cert", self.h.path("missing.pem")], timeout=10)
        self.assertEqual(rc, 2, err)
        self.assertNotIn("configuration OK", out)
        lines = stderr_lines(err, "lbd: ")
        text = "\n".join(lines)
        self.assertIn("missing.user", text)
        self.assertIn("--admin-tls-cert and --admin-tls-key go together", text)
        self.assertIn("missing.pem", text)
        self.assertIn("the same address as --pool", text)
        self.assertEqual(lines[-1], "lbd: --check: 4 problems", err)
        # two pools on one address: refused at start-up too, naming both pools (under
        # SO_REUSEPORT both would have bound it and shared its clients)
        rc, out, err = run([lbd_binary(), "--etcd", "http://127.0.0.1:%d" % free_port(),
                            "--pool", "web=127.0.0.1:%d" % port, "--pool",
                            "db=127.0.0.1:%d" % port, "--admin", "127.0.0.1:0", "--http",
                            "127.0.0.1:0"], timeout=10)
        self.assertEqual(rc, 2, err)
        self.assertIn("lbd: --pool db=127.0.0.1:%d: the same address as --pool web=127.0.0.1:%d"
                      % (port, port), err)
        # a wildcard listener takes its port on every address of its family: a pool on
        # 127.0.0.1 beside one on 0.0.0.0 (or [::1] beside [::]) at that port cannot bind
        for wild, other in (("0.0.0.0", "127.0.0.1"), ("[::]", "[::1]")):
            rc, out, err = run([lbd_binary(), "--check", "--pool", "web=%s:%d" % (other, port),
                                "--pool", "db=%s:%d" % (wild, port)], timeout=10)
            self.assertEqual(rc, 2, err)
            self.assertIn("lbd: --pool db=%s:%d: overlaps --pool web=%s:%d" % (wild, port, other,
                                                                                 port), err)
        rc, out, err = run([lbd_binary(), "--check", "--pool", "web=0.0.0.0:%d" % port,
                            "--pool", "db=[::1]:%d" % port], timeout=10)
        self.assertEqual(rc, 0, err)
        # a first retry longer than the longest: refused, at start-up and by --check alike
        rc, out, err = run([lbd_binary(), "--check", "--pool", "web=127.0.0.1:%d" % port,
                            "--etcd-backoff-initial", "10s", "--etcd-backoff-max", "5s"],
                           timeout=10)
        self.assertEqual(rc, 2, err)
        self.assertIn("--etcd-backoff-initial (10000 ms) is more than --etcd-backoff-max", err)
        # what is read before the checks (pools, networks) stops at its error, exit 2 too
        rc, out, err = run([lbd_binary(), "--check", "--pool", "web=localhost:80"], timeout=10)
        self.assertEqual(rc, 2, err)
        rc, out, err = run([lbd_binary(), "--check", "--pool", "web=127.0.0.1:1",
                            "--backend-networks", "10.0.0.0/33"], timeout=10)
        self.assertEqual(rc, 2, err)


class Policies(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        cls.b1 = Backend(h, "b1")
        cls.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(cls.b1.addr))
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, [POOL],
                      extra_args=["--shutdown-grace", "1s"]).start()

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    # -- helpers --

    def policy(self, *args, stdin=None):
        """lbctl policy ... against this etcd: (rc, stdout, stderr)."""
        argv = [lbctl_binary(), "policy"] + list(args) + ["--etcd", self.etcd.url,
                                                           "--prefix", PREFIX]
        return run(argv, timeout=30,
                   input_bytes=stdin.encode() if isinstance(stdin, str) else stdin)

    def write(self, name, text):
        path = self.h.path(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def algorithm(self):
        pools = self.lbd.ctl_json("pools")
        pools = pools["pools"] if isinstance(pools, dict) else pools
        return {p["name"]: p["algorithm"] for p in pools}[POOL]

    def applied(self):
        return self.lbd.log_text().count('msg="policy applied" pool=%s ' % POOL)

    def wait_applied(self, n0, algorithm):
        wait_until(lambda: self.applied() > n0, scaled(5), "lbd to apply the policy")
        self.assertEqual(self.algorithm(), algorithm)

    def bad_values(self):
        return self.lbd.metric("lbd_etcd_bad_values_total")

    # -- tests, in order: each starts from what the one before left --

    def test_1_set_good_policy_is_applied(self):
        n0 = self.applied()
        path = self.write("leastconn.json", json.dumps(
            {"algorithm": "leastconn", "health": {"type": "tcp", "interval": "500ms"}}, indent=2))
        rc, out, err = self.policy("set", POOL, path)
        self.assertEqual(rc, 0, err)
        self.assertIn("written to %s" % KEY, out)
        self.assertIn("before: none, lbd's defaults", out)
        self.assertRegex(out, r"algorithm\s+wrr -> leastconn")
        self.assertRegex(out, r"health.interval\s+2s -> 500ms")
        self.wait_applied(n0, "leastconn")
        self.assertIn("algorithm=leastconn", self.lbd.log_text())

    def test_2_set_with_a_typo_is_refused(self):
        before = self.etcd.get(KEY)
        rc, out, err = self.policy("set", POOL, "-", stdin=json.dumps(
            {"algorithm": "p2c", "health": {"intervl": "1s"}}))
        self.assertEqual(rc, 1, err)
        self.assertIn('unknown field "health.intervl" (did you mean interval?)', err)
        self.assertIn("nothing written", err)
        self.assertEqual(self.etcd.get(KEY), before)
        # the nested typo at the top level gets the nested name
        rc, out, err = self.policy("set", POOL, stdin='{"conect_timeout":"1s","intervl":"1s"}')
        self.assertEqual(rc, 1, err)
        self.assertIn("did you mean connect_timeout?", err)
        self.assertIn("did you mean health.interval?", err)
        self.assertIn("2 problems", err)
        self.assertEqual(self.etcd.get(KEY), before)
        self.assertEqual(self.algorithm(), "leastconn")

    def test_3_bad_policy_in_etcd_keeps_the_last_good_one(self):
        # An unknown field is ignored, with the nearest known name; the rest applies.
        n0, unknown0 = self.applied(), self.lbd.metric("lbd_etcd_unknown_fields_total")
        self.etcd.put(KEY, '{"algorithm":"p2c","conect_timeout":"1s"}')
        self.wait_applied(n0, "p2c")
        ignored = [ln for ln in self.lbd.log_text().splitlines()
                   if "unknown field ignored" in ln and "conect_timeout" in ln]
        self.assertEqual(len(ignored), 1, ignored)
        self.assertIn("did you mean connect_timeout?", ignored[0])
        self.assertEqual(self.lbd.metric("lbd_etcd_unknown_fields_total"), unknown0 + 1)
        n0 = self.applied()
        self.etcd.put(KEY, '{"algorithm":"leastconn"}')
        self.wait_applied(n0, "leastconn")
        # A value that does not parse refuses the policy: the last good one stays.
        bad0 = self.bad_values()
        bad = '{"algorithm":"p2c","connect_timeout":"soon"}'
        self.etcd.put(KEY, bad)
        line = ('msg="bad value, keeping the last good one" reason=bad_value key="%s"' % KEY)
        wait_until(lambda: line in self.lbd.log_text(), scaled(5), "lbd to refuse the policy")
        logged = [ln for ln in self.lbd.log_text().splitlines() if line in ln]
        self.assertEqual(len(logged), 1)
        self.assertIn("connect_timeout", logged[0])
        self.assertEqual(self.bad_values(), bad0 + 1)
        self.assertEqual(self.algorithm(), "leastconn")
        # the same value again is not news: not logged again (a re-list would not either)
        self.etcd.put(KEY, bad)
        self.etcd.put(backend_key(PREFIX, POOL, "b2"), backend_value(self.b1.addr))
        wait_until(lambda: "b2" in self.lbd.backends(POOL), scaled(5), "lbd to see b2")
        self.assertEqual(sum(line in ln for ln in self.lbd.log_text().splitlines()), 1)
        self.assertEqual(self.algorithm(), "leastconn")
        # lbctl shows what is stored, and warns on stderr that lbd refuses it
        rc, out, err = self.policy("get", POOL, "-o", "json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.strip(), bad)
        self.assertIn("connect_timeout", err)
        self.assertIn("lbd refuses this policy", err)
        # a good policy replaces it
        n0 = self.applied()
        rc, out, err = self.policy("set", POOL, stdin='{"algorithm":"p2c"}')
        self.assertEqual(rc, 0, err)
        self.assertIn("before: a policy lbd refused", out)
        self.wait_applied(n0, "p2c")

    def test_4_get_round_trips_and_an_unchanged_set_writes_nothing(self):
        text = json.dumps({"algorithm": "maglev", "retries": 3,
                           "health": {"type": "tcp", "path": "/healthz", "rise": 1}}, indent=4)
        n0 = self.applied()
        rc, out, err = self.policy("set", POOL, self.write("maglev.json", text))
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"algorithm\s+p2c -> maglev")
        self.assertRegex(out, r"retries\s+2 -> 3")
        self.wait_applied(n0, "maglev")
        rc, raw, err = self.policy("get", POOL, "-o", "json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(raw), json.loads(text))
        self.assertEqual(err, "")
        rc, pretty, err = self.policy("get", POOL)
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(pretty), json.loads(text))
        self.assertGreater(pretty.count("\n"), 3, "pretty output spans lines")
        # what get printed, set back: unchanged, nothing written
        rev = self.etcd.get_kv(KEY)
        rc, out, err = self.policy("set", POOL, stdin=pretty)
        self.assertEqual(rc, 0, err)
        self.assertIn("unchanged", out)
        self.assertEqual(self.etcd.get_kv(KEY), rev)
        # a pool without a policy: exit 1, saying lbd runs its defaults
        rc, out, err = self.policy("get", "nopolicy")
        self.assertEqual(rc, 1)
        self.assertIn("defaults", err)

    def test_5_validate_from_stdin(self):
        rc, out, err = self.policy("validate", POOL, stdin='{"algorithm":"wrr","retries":1}')
        self.assertEqual(rc, 0, err)
        self.assertIn("valid", out)
        bad = ('{"algorithm":"leastconns","health":{"tyep":"tcp","interval":"1ms"},'
               '"retries":"2"}')
        rc, out, err = self.policy("validate", POOL, "-", stdin=bad)
        self.assertEqual(rc, 1, err)
        lines = stderr_lines(err, "lbctl policy: stdin: ")
        self.assertEqual(len(lines), 5, err)
        text = "\n".join(lines)
        self.assertIn("did you mean leastconn?", text)
        self.assertIn('unknown field "health.tyep" (did you mean type?)', text)
        self.assertIn("retries must be a whole number", text)
        self.assertIn('health.interval "1ms": below the minimum; lbd would use 100ms', text)
        self.assertIn("4 problems", lines[-1])
        rc, out, err = self.policy("validate", POOL, "-o", "json", stdin=bad)
        self.assertEqual(rc, 1, err)
        doc = json.loads(out)
        self.assertFalse(doc["valid"])
        self.assertEqual(sorted(p["field"] for p in doc["problems"]),
                         ["algorithm", "health.interval", "health.tyep", "retries"])
        # not JSON at all, and an empty input
        rc, out, err = self.policy("validate", POOL, stdin="algorithm: wrr")
        self.assertEqual(rc, 1)
        self.assertIn("not JSON", err)
        rc, out, err = self.policy("validate", POOL, stdin="")
        self.assertEqual(rc, 1)
        # a directory instead of the file: said so, in one line
        rc, out, err = self.policy("validate", POOL, self.h.dir)
        self.assertEqual(rc, 1)
        self.assertIn("cannot read it: Is a directory (give the policy's JSON file)", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        # valid, but inert as combined: said, not refused
        rc, out, err = self.policy("validate", POOL, stdin='{"queue_timeout":"30s"}')
        self.assertEqual(rc, 0, err)
        self.assertIn("queue_timeout has no effect without max_conns", err)
        rc, out, err = self.policy("validate", POOL, stdin='{"queue_timeout":"30s","max_conns":4}')
        self.assertEqual((rc, err), (0, ""))

    def test_6_lbctl_and_lbd_judge_alike(self):
        cases = [
            ('{"algorithm":"leastconn","health":{"rise":3}}', True),
            ('{"algorithm":"wrr","health":{"intervl":"1s"}}', "unknown"),
            ('{"algorithm":"p2c","Retries":2}', "unknown"),
            ('{"algorithm":"wrr","retries":"2"}', False),
            ('{"algorithm":"p2c","slow_start":"10s","drain_timeout":"1m"}', True),
        ]
        for text, good in cases:
            with self.subTest(policy=text):
                rc, out, err = self.policy("validate", POOL, stdin=text)
                self.assertEqual(rc, 0 if good is True else 1, err)
                applied0, bad0 = self.applied(), self.bad_values()
                unknown0 = self.lbd.metric("lbd_etcd_unknown_fields_total")
                self.etcd.put(KEY, text)
                wait_until(lambda: self.applied() > applied0 or self.bad_values() > bad0,
                           scaled(5), "lbd to apply or refuse the policy")
                self.assertEqual(self.applied() > applied0, good is not False)
                self.assertEqual(self.bad_values() > bad0, good is False)
                self.assertEqual(self.lbd.metric("lbd_etcd_unknown_fields_total") > unknown0,
                                 good == "unknown")


if __name__ == "__main__":
    import lbtest
    lbtest.main()
