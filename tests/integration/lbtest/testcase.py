"""unittest glue: HarnessTestCase (a Harness per test class, the logs of
everything a failed test started printed on stderr) and main(), which
takes --bin-dir off the command line."""

import os
import sys
import unittest

from .procs import Harness


def case_failed(case):
    """True when `case` (or one of its subtests) has failed or raised so far.

    Meant for tearDown(), which unittest runs whatever the outcome.  Up to
    Python 3.10 the errors of a test wait in its _Outcome until it ends;
    from 3.11 on they go to the result at once and _Outcome.success only
    describes the part running now (tearDown itself), so it reads True.
    """
    outcome = getattr(case, "_outcome", None)
    if outcome is None:
        return False
    pending = getattr(outcome, "errors", None)
    if pending is not None:  # Python <= 3.10
        return any(exc_info is not None for _, exc_info in pending)
    result = getattr(outcome, "result", None)
    if result is None:
        return False
    return any(test is case or getattr(test, "test_case", None) is case
               for test, _ in list(result.errors) + list(result.failures))


class HarnessTestCase(unittest.TestCase):
    """Base class: a Harness per test class in cls.h, logs dumped on failure.

    Subclasses put their fixtures in setUpWorld(cls) (a classmethod); if it
    fails, the logs are printed and everything started so far is stopped.
    A test that makes a Harness of its own sets self.h in setUp (and
    registers its cleanup): its logs are the ones printed.  The logs are
    printed in tearDown, before cleanups stop the processes.
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
        if self.h is not None and case_failed(self):
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
