"""unittest glue: HarnessTestCase (a Harness per test class, the logs of
everything a failed test started printed on stderr) and main(), which
takes --bin-dir off the command line."""

import os
import sys
import unittest

from .procs import Harness


class HarnessTestCase(unittest.TestCase):
    """Base class: a Harness per test class in cls.h, logs dumped on failure.

    Subclasses put their fixtures in setUpWorld(cls) (a classmethod); if it
    fails, the logs are printed and everything started so far is stopped.
    """

    h = None

    @classmethod
    def setUpWorld(cls):
        pass

    @classmethod
    def setUpClass(cls):
        cls.h = Harness(cls.__name__)
        try:
            cls.setUpWorld()
        except BaseException:
            cls.h.dump_logs()
            cls.h.cleanup()
            raise

    @classmethod
    def tearDownWorld(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        try:
            cls.tearDownWorld()
        except BaseException:
            cls.h.dump_logs()
            raise
        finally:
            cls.h.cleanup()

    def tearDown(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and not getattr(outcome, "success", True) and self.h is not None:
            sys.stderr.write("\n===== %s failed: logs =====\n" % self.id())
            self.h.dump_logs()


def main():
    """unittest.main() that first takes --bin-dir DIR off the command line."""
    argv = list(sys.argv)
    rest = [argv[0]]
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--bin-dir" and i + 1 < len(argv):
            os.environ["LB_BUILD_DIR"] = os.path.abspath(argv[i + 1])
            i += 2
            continue
        if a.startswith("--bin-dir="):
            os.environ["LB_BUILD_DIR"] = os.path.abspath(a.split("=", 1)[1])
            i += 1
            continue
        rest.append(a)
        i += 1
    unittest.main(argv=rest, verbosity=2)
