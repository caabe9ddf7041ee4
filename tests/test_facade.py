"""The public facade in funnel_tw/__init__.py: each name is the real object, loaded on use."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import funnel_tw


class FacadeTests(SynchronousTestCase):
    def test_names_are_the_real_objects(self) -> None:
        from funnel_tw.config import ConfigError, load_node_config
        from funnel_tw.flow import Flow
        from funnel_tw.node.service import NodeService
        from funnel_tw.relay.service import RelayService

        self.assertIs(funnel_tw.NodeService, NodeService)
        self.assertIs(funnel_tw.RelayService, RelayService)
        self.assertIs(funnel_tw.load_node_config, load_node_config)
        self.assertIs(funnel_tw.ConfigError, ConfigError)
        self.assertIs(funnel_tw.Flow, Flow)
        self.assertEqual(sorted(funnel_tw.__all__), sorted(dir_public()))

    def test_unknown_name(self) -> None:
        with self.assertRaises(AttributeError):
            funnel_tw.NoSuchThing  # noqa: B018

    def test_importing_the_package_loads_nothing_else(self) -> None:
        code = (
            "import sys, funnel_tw; "
            "print(sorted(m for m in sys.modules if m.startswith('funnel_tw')))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(out.strip(), "['funnel_tw', 'funnel_tw._version']")


def dir_public() -> list[str]:
    return ["__version__", *funnel_tw._PUBLIC]
