#!/usr/bin/python3
"""Credentials files given to lbd and lbctl: --admin-token-file and
--etcd-user-file must be regular files, and one that everyone may read is
warned about, the same way for both.

A FIFO named by mistake (or by someone who wants start-up to hang) used to
block in open(): now lbd and lbctl each print one line and exit at once,
with the exit code they use for an unreadable file.  No etcd is needed:
these checks come before lbd talks to anyone.
"""

import os
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (HarnessTestCase, Lbd, free_port, lbctl_binary, lbd_binary, run,  # noqa: E402
                    scaled, wait_until)

TOKEN = "lbtest-credfiles-token"
# A FIFO must be refused at once; "at once" with room for a loaded machine.
PROMPT_S = 10


class CredentialFiles(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.fifo = cls.h.path("creds.fifo")
        os.mkfifo(cls.fifo, 0o600)

    def secret(self, name, text, mode):
        path = self.h.path(name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def lbd_argv(self, *args):
        return [lbd_binary(), "--etcd", "http://127.0.0.1:%d" % free_port(),
                "--pool", "web=127.0.0.1:%d" % free_port(),
                "--admin", "127.0.0.1:%d" % free_port(),
                "--http", "127.0.0.1:%d" % free_port()] + list(args)

    def assert_refused_at_once(self, argv, want_rc, prefix, *needles):
        rc, out, err = run(argv, timeout=PROMPT_S)  # TimeoutExpired: it blocked
        self.assertEqual(rc, want_rc, err)
        lines = [ln for ln in err.splitlines() if ln.startswith(prefix)]
        self.assertEqual(len(lines), 1, err)
        for n in needles:
            self.assertIn(n, lines[0])

    def test_lbd_admin_token_fifo_is_one_error_line_not_a_hang(self):
        self.assert_refused_at_once(self.lbd_argv("--admin-token-file", self.fifo), 1, "lbd: ",
                                    "admin token file", self.fifo, "FIFO, not a regular file")

    def test_lbd_etcd_user_fifo_is_one_error_line_not_a_hang(self):
        self.assert_refused_at_once(self.lbd_argv("--etcd-user-file", self.fifo), 1, "lbd: ",
                                    "--etcd-user-file", self.fifo, "FIFO, not a regular file")

    def test_lbctl_admin_token_fifo_is_one_error_line_not_a_hang(self):
        self.assert_refused_at_once(
            [lbctl_binary(), "--admin", "127.0.0.1:%d" % free_port(), "--admin-token-file",
             self.fifo, "pools"], 1, "lbctl: ", "admin token file", "FIFO, not a regular file")

    def test_lbctl_register_etcd_user_fifo_is_one_error_line_not_a_hang(self):
        rc, out, err = run([lbctl_binary(), "register", "--etcd",
                            "http://127.0.0.1:%d" % free_port(), "--pool", "web", "--id", "b1",
                            "--addr", "127.0.0.1:8080", "--etcd-user-file", self.fifo],
                           timeout=PROMPT_S)
        self.assertEqual(rc, 2, err)
        self.assertIn("FIFO, not a regular file", err)

    def lbd_log_after_start(self, name, *args):
        """Starts lbd (no etcd: it is up, not ready) and returns its log once it listens."""
        lbd = Lbd(self.h, "http://127.0.0.1:%d" % free_port(), "/lbtest-credfiles/", ["web"],
                  extra_args=list(args) + ["--shutdown-grace", "1s"], name=name)
        lbd.start(wait_ready=False)
        wait_until(lambda: "admin API listening" in lbd.log_text(), scaled(10),
                   "lbd's admin API to listen")
        text = lbd.log_text()
        lbd.stop(expect_rc=0)
        return text

    def test_admin_token_file_readable_by_everyone_is_warned_like_the_etcd_one(self):
        everyone = self.secret("everyone.token", TOKEN + "\n", 0o644)
        text = self.lbd_log_after_start("lbd-token-644", "--admin-token-file", everyone)
        self.assertIn("admin token file is readable by every user; chmod o-rwx it", text)
        self.assertIn("file=%s" % everyone, text)
        self.assertNotIn(TOKEN, text)
        # group access (a Kubernetes secret with fsGroup) is not worth a warning
        group = self.secret("group.token", TOKEN + "\n", 0o640)
        text = self.lbd_log_after_start("lbd-token-640", "--admin-token-file", group)
        self.assertNotIn("readable by every user", text)
        self.assertEqual(stat.S_IMODE(os.stat(group).st_mode), 0o640)


if __name__ == "__main__":
    lbtest.main()
