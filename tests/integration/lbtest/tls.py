"""TLS files for etcd and lbd, made with the openssl command line."""

import os
import ssl

from .procs import run


class TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and client certificates, made
    with the openssl command line in the harness's temp dir.

    Attributes are file paths: ca, server_cert, server_key, client_cert,
    client_key, and other_cert/other_key (a client certificate signed by a
    CA etcd does not trust).
    """

    def __init__(self, h, name="tls"):
        self.dir = h.path(name)
        os.makedirs(self.dir, exist_ok=True)
        p = lambda f: os.path.join(self.dir, f)  # noqa: E731
        self.ca, self.ca_key = p("ca.crt"), p("ca.key")
        self.server_cert, self.server_key = p("server.crt"), p("server.key")
        self.client_cert, self.client_key = p("client.crt"), p("client.key")
        self.other_cert, self.other_key = p("other.crt"), p("other.key")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl(["req", "-x509"] + ec + ["-keyout", self.ca_key, "-out", self.ca,
                                               "-days", "2", "-subj", "/CN=lbtest-ca"])
        self._openssl(["req", "-x509"] + ec + ["-keyout", self.other_key, "-out", self.other_cert,
                                               "-days", "2", "-subj", "/CN=lbtest-stranger"])
        self._sign("server", self.server_cert, self.server_key,
                   "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
        self._sign("lbd", self.client_cert, self.client_key, "extendedKeyUsage=clientAuth\n")

    def _openssl(self, args):
        rc, out, err = run(["openssl"] + args, timeout=60)
        if rc != 0:
            raise AssertionError("openssl %s failed: %s" % (" ".join(args[:2]), err.strip()))

    def _sign(self, cn, cert, key, extensions):
        csr, ext = cert + ".csr", cert + ".ext"
        with open(ext, "w") as f:
            f.write(extensions)
        self._openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                       "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=%s" % cn])
        self._openssl(["x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                       "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext])

    def client_context(self, with_cert=True):
        ctx = ssl.create_default_context(cafile=self.ca)
        if with_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx

    def lbd_args(self, with_cert=True):
        a = ["--etcd-ca", self.ca]
        if with_cert:
            a += ["--etcd-cert", self.client_cert, "--etcd-key", self.client_key]
        return a


# PEM files by name in a directory, for tests of lbd's own TLS (the admin
# API): <name>.pem and <name>.key.

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def openssl(*args, cwd):
    """Runs the openssl command line in cwd; raises with its stderr on failure."""
    rc, _, err = run(["openssl"] + list(args), timeout=60, cwd=cwd)
    if rc != 0:
        raise AssertionError("openssl %s failed: %s" % (" ".join(args[:2]), err.strip()))


def make_ca(d, name, cn):
    """A self-signed CA: d/<name>.pem and d/<name>.key."""
    openssl("req", "-x509", *_EC, "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
            "-subj", "/CN=" + cn, cwd=d)


def make_server_cert(d, name, cn, ca="ca"):
    """d/<name>.pem + d/<name>.key for 127.0.0.1 and localhost (serverAuth),
    signed by the CA d/<ca>.pem."""
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("req", *_EC, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn,
            cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext",
            cwd=d)
