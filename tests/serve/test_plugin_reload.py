"""Handler plugins across a live reload (node/reload.py -> node/plugins.py): unchanged sections
keep their running instance, a changed one is replaced (new service started before it gets a
flow, the old one stopped with the drain deadline) or told its new options through its
``reload(options)`` hook, added and removed sections start and stop, and a bad option refuses
the whole reload with its FILE:LINE while the running plugins stay as they were."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from funnel_tw import testing
from funnel_tw.config import load_node_config
from funnel_tw.config.plan import node_plan
from funnel_tw.daemon.reload import ReloadRefused
from funnel_tw.node.plugins import DRAIN_TIMEOUT
from funnel_tw.node.reload import apply_node_plan
from funnel_tw.node.service import NodeService
from funnel_tw.serve.plugins import load_checked

from ..test_reload_plan import node_ini

MODULE = "twisted.plugins.funnel_tw_reload_test"

PLUGIN = """
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.plugin import IPlugin
from zope.interface import implementer
from funnel_tw.plugin import IHandlerPlugin, IIngressHandler
from funnel_tw.plugin import options as opt

EVENTS = []          # (what, section, word)
HOLD = {}            # word -> a Deferred its stopService returns (a drain that never ends)


@implementer(IIngressHandler)
class Handler(Service):
    terminate_tls = True

    def __init__(self, options, context):
        self.word, self.context = options["word"], context
        self.events = context.metrics.counter("events", "test")
        self.live = context.metrics.gauge("live", "test")
        EVENTS.append(("build", context.section, self.word))

    def startService(self):
        super().startService()
        # which handler the dispatcher hands flows to right now (the test's node)
        EVENTS.append(("start", self.context.section, self.word))

    def stopService(self):
        super().stopService()
        EVENTS.append(("stop", self.context.section, self.word))
        return HOLD.get(self.word)

    def build_protocol(self, flow):
        self.events.inc()
        return Protocol()


class Hooked(Handler):
    def reload(self, options):
        if options["word"] == "explode":
            raise RuntimeError("cannot take that")
        EVENTS.append(("reload", self.context.section, options["word"]))
        self.word = options["word"]


@implementer(IPlugin, IHandlerPlugin)
class Plugin:
    name = "svc-test"
    schema = (opt.string("word", "x"), opt.integer("n", 1, low=1, high=9))
    kind = Handler

    def build(self, options, context):
        return self.kind(options, context)


class HookedPlugin(Plugin):
    name = "hook-test"
    kind = Hooked


svc = Plugin()
hooked = HookedPlugin()
"""


def section(port: int, plugin: str = "svc-test", **options: str) -> str:
    lines = [f"[serve {port}]", f"handler = {plugin}"]
    return "\n".join(lines + [f"{k} = {v}" for k, v in options.items()]) + "\n\n"


class PluginReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        (self.dir / "twisted" / "plugins").mkdir(parents=True)
        (self.dir / "twisted" / "plugins" / "funnel_tw_reload_test.py").write_text(PLUGIN)
        testing.plugin_path(self, self.dir)
        self.addCleanup(sys.modules.pop, MODULE, None)
        self.clock = Clock()
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def write(self, serve: str) -> Path:
        path = self.dir / "node.ini"
        path.write_text(node_ini(serve=serve, state_dir=str(self.dir / "state")))
        return path

    def start(self, serve: str) -> NodeService:
        node = NodeService(load_checked(self.write(serve)), self.clock)
        node.plugin_services.start()  # as startService does, without the overlay
        self.module = sys.modules[MODULE]
        self.events: list[tuple[str, str, str]] = self.module.EVENTS  # type: ignore[attr-defined]
        return node

    def reload(self, node: NodeService, serve: str) -> None:
        # what SIGHUP reads: the file without the plugin check (node/reload.py checks it)
        new = load_node_config(self.write(serve))
        apply_node_plan(node, new, node_plan(node.config, new))

    def test_changed_replaced_unchanged_kept_added_and_removed(self) -> None:
        node = self.start(section(10000, word="a") + section(10001, word="b") + section(10002))
        kept = node.plugins[10000].handler
        old = node.plugins[10001].handler
        node.dispatcher.handlers[10001].build_protocol(testing.make_flow(port=10001))
        self.events.clear()
        starts_saw: list[Any] = []
        real_start = type(old).startService

        def spy_start(handler: Any) -> None:
            starts_saw.append(node.dispatcher.handlers.get(10001))
            real_start(handler)

        self.patch(type(old), "startService", spy_start)

        self.reload(node, section(10000, word="a") + section(10001, word="B") + section(10003))

        self.assertIs(node.plugins[10000].handler, kept)  # unchanged: the same instance
        self.assertIs(node.dispatcher.handlers[10000], kept)
        new = node.dispatcher.handlers[10001]
        self.assertIsNot(new, old)
        self.assertEqual(new.word, "B")  # type: ignore[attr-defined]
        self.assertEqual(
            self.events,
            [
                ("build", "serve 10001", "B"),
                ("build", "serve 10003", "x"),
                ("start", "serve 10001", "B"),
                ("start", "serve 10003", "x"),
                ("stop", "serve 10001", "b"),
                ("stop", "serve 10002", "x"),
            ],
        )
        # the new instance was started while the dispatcher still had the old one
        self.assertEqual(starts_saw[:2], [old, old])
        self.assertNotIn(10002, node.dispatcher.handlers)
        self.assertTrue(kept.running)  # type: ignore[attr-defined]
        self.assertFalse(old.running)  # type: ignore[attr-defined]
        # counters go on across the new instance (monotonic); status shows the new sections
        status = node.plugin_status()
        self.assertEqual(sorted(status), ["10000", "10001", "10003"])
        self.assertEqual(status["10001"]["counters"], {"events": 1})
        # a second reload with the same file changes nothing
        self.events.clear()
        self.reload(node, section(10000, word="a") + section(10001, word="B") + section(10003))
        self.assertEqual(self.events, [])

    def test_same_options_written_differently_keep_the_instance(self) -> None:
        node = self.start(section(10000, n="2"))
        kept = node.plugins[10000].handler
        self.events.clear()
        self.reload(node, section(10000, n="02"))
        self.assertIs(node.plugins[10000].handler, kept)
        self.assertEqual(self.events, [])

    def test_old_service_is_given_the_drain_deadline(self) -> None:
        from twisted.internet.defer import Deferred

        node = self.start(section(10000, word="slow"))
        self.module.HOLD["slow"] = Deferred()  # type: ignore[attr-defined]
        self.addCleanup(self.module.HOLD.clear)  # type: ignore[attr-defined]
        self.reload(node, section(10000, word="fast"))  # the reload does not wait
        self.assertEqual(node.dispatcher.handlers[10000].word, "fast")  # type: ignore[attr-defined]
        self.assertEqual(self.warnings(), [])
        self.clock.advance(DRAIN_TIMEOUT)
        self.assertEqual(
            self.warnings(), ["plugin svc-test for [serve 10000] did not stop within 10.0s"]
        )

    def warnings(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.logged if e.get("log_level") == LogLevel.warn]

    def test_reload_hook_keeps_the_instance(self) -> None:
        node = self.start(section(10000, "hook-test", word="a"))
        handler = node.plugins[10000].handler
        self.events.clear()
        self.reload(node, section(10000, "hook-test", word="b"))
        self.assertIs(node.plugins[10000].handler, handler)
        self.assertEqual(self.events, [("reload", "serve 10000", "b")])
        self.assertEqual(node.plugins[10000].options["word"], "b")
        # a hook that fails: logged, the instance goes on with its old options
        self.events.clear()
        self.reload(node, section(10000, "hook-test", word="explode"))
        self.assertIs(node.plugins[10000].handler, handler)
        self.assertEqual(node.plugins[10000].options["word"], "b")
        self.assertEqual(handler.word, "b")  # type: ignore[attr-defined]
        self.assertTrue(any(e.get("log_failure") for e in self.logged))
        self.flushLoggedErrors(RuntimeError)
        # another plugin name in the section: a new instance, whatever the hook
        self.reload(node, section(10000, "svc-test", word="c"))
        self.assertIsNot(node.plugins[10000].handler, handler)
        self.assertEqual(
            self.events[-2:], [("start", "serve 10000", "c"), ("stop", "serve 10000", "b")]
        )

    def test_bad_option_refuses_the_reload_with_its_line(self) -> None:
        node = self.start(section(10000, word="a"))
        handler = node.plugins[10000].handler
        self.events.clear()
        with self.assertRaises(ReloadRefused) as caught:
            self.reload(node, section(10000, word="a", n="12"))
        self.assertRegex(
            str(caught.exception), r"node\.ini:\d+: \[serve 10000\] n: 12 is out of range"
        )
        self.assertIs(node.plugins[10000].handler, handler)
        self.assertIs(node.dispatcher.handlers[10000], handler)
        self.assertEqual(self.events, [])
