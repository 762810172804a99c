"""Loaded by cpython_suite.py next to CPython's test_queues: proves that those tests really ran
against aiofast's classes (test_queues binds q_class = asyncio.PriorityQueue etc. at import)."""
import asyncio
import asyncio.queues
import importlib
import unittest

import aiofast


class InstalledQueuesProbe(unittest.TestCase):
    def test_asyncio_names_are_aiofast(self):
        for name in ("Queue", "PriorityQueue", "LifoQueue"):
            self.assertIs(getattr(asyncio, name), getattr(aiofast, name))
            self.assertIs(getattr(asyncio.queues, name), getattr(aiofast, name))

    def test_cpython_suite_bound_our_classes(self):
        mod = importlib.import_module("test.test_asyncio.test_queues")
        self.assertIs(mod.QueueJoinTests.q_class, aiofast.Queue)
        self.assertIs(mod.PriorityQueueJoinTests.q_class, aiofast.PriorityQueue)
        self.assertIs(mod.LifoQueueJoinTests.q_class, aiofast.LifoQueue)
