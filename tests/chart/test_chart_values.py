#!/usr/bin/python3
"""Values of the lbd chart against values.schema.json (python3-jsonschema),
as Helm validates them: the merged values (chart defaults <- values file),
not the file alone.

- values.yaml and every ci/*.yaml validate;
- every tests/chart/bad/*.yaml is refused, the way its first line says:
  "# expect: schema" by the schema, "# expect: fail TEXT" by the chart's
  own `fail` (helmrender exits 1 with TEXT on stderr) while the schema
  takes it, so each refusal is the one meant;
- Chart.yaml's kubeVersion refuses a 1.23 cluster.
"""

import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chartlib  # noqa: E402

import jsonschema  # noqa: E402


def schema():
    with open(chartlib.SCHEMA) as f:
        return json.load(f)


def schema_errors(values):
    v = jsonschema.Draft7Validator(schema())
    return ["%s: %s" % ("/".join(map(str, e.path)) or "(top)", e.message)
            for e in sorted(v.iter_errors(values), key=lambda e: list(map(str, e.path)))]


def expectation(path):
    with open(path) as f:
        first = f.readline().strip()
    m = re.match(r"^# expect: (schema|fail (.+))$", first)
    if not m:
        raise AssertionError("%s: first line must be '# expect: schema' or '# expect: fail TEXT'" % path)
    return ("schema", None) if m.group(1) == "schema" else ("fail", m.group(2))


class Schema(unittest.TestCase):
    def test_schema_is_draft7(self):
        jsonschema.Draft7Validator.check_schema(schema())

    def test_defaults_validate(self):
        self.assertEqual(schema_errors(chartlib.merged_values()), [])

    def test_ci_values_validate(self):
        files = chartlib.ci_files()
        self.assertGreaterEqual(len(files), 10)
        for f in files:
            with self.subTest(values=os.path.basename(f)):
                self.assertEqual(schema_errors(chartlib.merged_values([f])), [])


class BadValues(unittest.TestCase):
    def test_bad_values_are_refused(self):
        files = chartlib.bad_files()
        kinds = {expectation(f)[0] for f in files}
        self.assertEqual(kinds, {"schema", "fail"}, "bad/ needs both kinds of refusal")
        for f in files:
            kind, text = expectation(f)
            with self.subTest(values=os.path.basename(f)):
                merged = chartlib.merged_values([f])
                errors = schema_errors(merged)
                if kind == "schema":
                    self.assertTrue(errors, "the schema took %s" % f)
                    continue
                self.assertEqual(errors, [], "the schema, not the chart, refused %s" % f)
                rc, out, err = chartlib.run_render([f])
                self.assertEqual(rc, 1, "helmrender rendered %s:\n%s" % (f, out[:500]))
                self.assertIn("execution error at (lbd/templates/", err)
                self.assertIn(text, err)
                self.assertEqual(len(err.strip().splitlines()), 1, "one error line: %r" % err)

    def test_kube_version_below_1_24_is_refused(self):
        ci = os.path.join(chartlib.CI_DIR, "default-values.yaml")
        rc, _, err = chartlib.run_render([ci], extra=["--kube-version", "v1.23.9"])
        self.assertEqual(rc, 1)
        self.assertIn("chart requires kubeVersion: >=1.24.0-0", err)
        rc, _, err = chartlib.run_render([ci], extra=["--kube-version", "v1.24.0-eks-1"])
        self.assertEqual(rc, 0, err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
