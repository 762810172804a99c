"""Run one of CPython's own asyncio test modules with aiofast.install() in effect.

Used by test_cpython_*.py in a subprocess (a clean interpreter, asyncio patched before the tests
import anything): ``python tests/cpython_suite.py test.test_asyncio.test_locks [...]`` prints one
JSON document: the ids of the tests that ran, failed, errored and were skipped (with reasons).
"""
import importlib
import json
import sys
import unittest


def main(modnames):
    import aiofast

    aiofast.install()
    suite = unittest.TestSuite()
    for name in modnames:
        suite.addTests(unittest.defaultTestLoader.loadTestsFromModule(importlib.import_module(name)))
    result = unittest.TestResult()
    suite.run(result)
    out = {
        "ran": result.testsRun,
        "failures": {t.id(): tb for t, tb in result.failures},
        "errors": {t.id(): tb for t, tb in result.errors},
        "skipped": {t.id(): reason for t, reason in result.skipped},
        "unexpected_successes": [t.id() for t in result.unexpectedSuccesses],
        "installed": [repr(aiofast.Lock)],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
