"""node.ini and relay.ini -> frozen attrs objects, or one ConfigError listing every problem.

Every error reads "FILE:LINE: [SECTION] KEY: WHY" and the whole file is checked before failing,
so `funnel-tw check-config` can show all problems at once. A file that loads but likely does not
do what it seems to say gets `warnings` in the same format. Nothing here touches the network.

    ini.py     the line-numbered INI engine and ConfigError
    values.py  the value converters (ports, durations, addresses, host names, URLs, key files)
    node.py    the node.ini schema        relay.py  the relay.ini schema
    ops.py     metrics-listen, access-log, access-log-format: [node] and [relay] alike
    model.py   the frozen objects, a serve port's handler as a tagged union
"""

from __future__ import annotations

import os

from .ini import MAX_FILE_SIZE, ConfigError, ConfigWarning, IniFile, format_error
from .model import (
    HTTPSMounts,
    NodeConfig,
    OpsConfig,
    PeerConfig,
    PluginHandler,
    PortHandler,
    RelayConfig,
    RelayNode,
    ServePort,
    TCPBuffers,
    TCPForward,
    TLSConfig,
    TLSTerminatedTCP,
)
from .node import PluginCheck, load_node_config, node_config
from .relay import load_relay_config, relay_config

__all__ = [
    "MAX_FILE_SIZE",
    "ConfigError",
    "ConfigWarning",
    "HTTPSMounts",
    "NodeConfig",
    "OpsConfig",
    "PeerConfig",
    "PluginHandler",
    "PortHandler",
    "RelayConfig",
    "RelayNode",
    "ServePort",
    "TCPBuffers",
    "TCPForward",
    "TLSConfig",
    "TLSTerminatedTCP",
    "format_error",
    "load_config",
    "load_node_config",
    "load_relay_config",
]


def load_config(
    path: str | os.PathLike[str], plugins: PluginCheck | None = None
) -> NodeConfig | RelayConfig:
    """Read either file: one with a [relay] section and no [node] section is a relay.ini
    (``plugins`` checks a node.ini's handler plugin options, as in load_node_config)."""
    file = IniFile(path)
    headers = {section.header.strip() for section in file.sections}
    if "relay" in headers and "node" not in headers:
        return relay_config(file)
    return node_config(file, plugins)
