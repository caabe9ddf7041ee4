"""The `funnel-tw` command: key tools that match wg's, a config checker, status, enrollment by
token (invite, join, nodes, remove-node), and the demo.

Exit codes: 0 success (`check-config` warnings included), 1 a bad key or config, or no running
node for `status` (a message on stderr, never a traceback), 2 bad command-line usage (argparse's
own convention).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Callable
from typing import TextIO

from funnel_tw._version import __version__
from funnel_tw.config import (
    ConfigError,
    NodeConfig,
    RelayConfig,
    load_config,
    load_node_config,
    load_relay_config,
)
from funnel_tw.keys import (
    decode_key,
    encode_key,
    generate_preshared_key,
    generate_private_key,
    public_key,
)

PROG = "funnel-tw"
_MAX_KEY_INPUT = 4096  # stdin is untrusted; a key plus whitespace is far below this


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit code (the console script exits with it)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "demo":
        # Everything after "demo" belongs to the demo, including --help.
        return _demo(args[1:])
    parser = _parser()
    try:
        options = parser.parse_args(args)
    except SystemExit as e:  # --help, --version, or a usage error already reported
        return e.code if isinstance(e.code, int) else 2
    if options.command is None:
        parser.print_usage(sys.stderr)
        return 2
    command: Callable[[argparse.Namespace], int] = options.run
    return command(options)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Publish a local service through a relay you run yourself.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    genkey = sub.add_parser("genkey", help="print a new private key, like `wg genkey`")
    genkey.set_defaults(run=_genkey)

    pubkey = sub.add_parser("pubkey", help="read a private key on stdin, print its public key")
    pubkey.set_defaults(run=_pubkey)

    genpsk = sub.add_parser("genpsk", help="print a new preshared key, like `wg genpsk`")
    genpsk.set_defaults(run=_genpsk)

    check = sub.add_parser("check-config", help="check a node.ini or relay.ini")
    check.add_argument("file", metavar="FILE")
    kind = check.add_mutually_exclusive_group()
    for kind_name in ("node", "relay"):
        kind.add_argument(
            f"--{kind_name}",
            action="store_const",
            dest="kind",
            const=kind_name,
            help=f"read FILE as {kind_name}.ini (default: [relay] without [node] means relay)",
        )
    check.set_defaults(run=_check_config, kind=None)

    status = sub.add_parser(
        "status", help="ask the running node (or relay) for its peers, serve and certificates"
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print the serve config as `tailscale serve status --json` does",
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        metavar="FILE",
        default="node.ini",
        help="node.ini or relay.ini: its state-dir holds the socket (default: node.ini)",
    )
    where.add_argument(
        "--socket", metavar="PATH", help="the local API socket (default: STATE-DIR/funnel-tw.sock)"
    )
    status.set_defaults(run=_status)

    _enroll_parsers(sub)

    # Listed for --help only: main() hands "demo ..." over before argparse sees it.
    sub.add_parser("demo", help="run a node, a relay and a backend on this machine", add_help=False)
    return parser


def _enroll_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """invite, join, nodes, remove-node: enrollment by token (docs/operations.md)."""
    invite = sub.add_parser("invite", help="make a token a node joins this relay with")
    invite.add_argument("--config", metavar="FILE", default="relay.ini", help="the relay.ini")
    invite.add_argument(
        "--hostnames", metavar="LIST", required=True, help="names the node may serve, comma list"
    )
    invite.add_argument("--name", metavar="NAME", help="the node's name (default: a hostname)")
    invite.add_argument(
        "--expires", metavar="SECONDS", type=float, default=3600.0, help="default: 3600"
    )
    invite.add_argument(
        "--reusable", action="store_true", help="many nodes may join with it until it expires"
    )
    invite.set_defaults(run=_invite)

    join = sub.add_parser("join", help="enroll this node with a relay, with a token")
    join.add_argument("--config", metavar="FILE", default="node.ini", help="the node.ini")
    join.add_argument("token", metavar="TOKEN")
    join.set_defaults(run=_join)

    nodes = sub.add_parser("nodes", help="list the relay's nodes, static and enrolled")
    nodes.add_argument("--config", metavar="FILE", default="relay.ini", help="the relay.ini")
    nodes.add_argument("--json", action="store_true", help="print the relay's JSON answer")
    nodes.set_defaults(run=_nodes)

    remove = sub.add_parser("remove-node", help="revoke an enrolled node, live")
    remove.add_argument("--config", metavar="FILE", default="relay.ini", help="the relay.ini")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(run=_remove_node)


def _relay_call(
    options: argparse.Namespace, url: str, post: dict[str, object] | None = None
) -> object | None:
    """Ask the running relay of ``--config`` (None: the error is on stderr)."""
    from funnel_tw.daemon.localapi.address import (
        RELAY_SOCKET_NAME,
        LocalAPIUnavailable,
        socket_path,
    )
    from funnel_tw.daemon.localapi.client import fetch

    try:
        config = load_relay_config(options.config)
    except ConfigError as e:
        for line in e.errors:
            sys.stderr.write(line + "\n")
        return None
    path = socket_path(config.state_dir, RELAY_SOCKET_NAME)
    try:
        answer: object = fetch(path, url, who="relay", post=post)
    except LocalAPIUnavailable as e:
        sys.stderr.write(f"{PROG} {options.command}: {e}\n")
        return None
    return answer


def _invite(options: argparse.Namespace) -> int:
    from funnel_tw.daemon.enroll import INVITE_PATH

    body = {
        "hostnames": options.hostnames,
        "name": options.name,
        "expires": options.expires,
        "reusable": options.reusable,
    }
    answer = _relay_call(options, INVITE_PATH, body)
    if not isinstance(answer, dict):
        return 1
    kind = "reusable" if answer.get("reusable") else "single-use"
    sys.stdout.write(
        f"invitation for {', '.join(answer.get('hostnames') or [])} ({kind}, expires in "
        f"{answer.get('expires_in', 0):g}s; nodes enroll at {answer.get('enroll')})\n"
        "on the node: funnel-tw join --config node.ini TOKEN\n"
        f"{answer['token']}\n"
    )
    return 0


def _join(options: argparse.Namespace) -> int:
    from funnel_tw.node.join import JoinError, join

    try:
        joined = join(options.config, options.token)
    except ConfigError as e:
        for line in e.errors:
            sys.stderr.write(line + "\n")
        return 1
    except JoinError as e:
        sys.stderr.write(f"{PROG} join: {e}\n")
        return 1
    got = joined.enrollment
    if joined.key_created is not None:
        sys.stdout.write(f"created the node key {joined.key_created} (0600)\n")
    host, port = got.relay.endpoint or ("?", 0)
    sys.stdout.write(
        f"joined relay {got.relay.name} ({host}:{port}) as node {got.name}: "
        f"{', '.join(str(a) for a in got.addresses)}; hostnames {', '.join(got.hostnames)}\n"
        f"recorded in {joined.path}; start (or restart) the node to use it\n"
    )
    return 0


def _nodes(options: argparse.Namespace) -> int:
    from funnel_tw.daemon.enroll import NODES_PATH

    answer = _relay_call(options, NODES_PATH)
    if not isinstance(answer, dict):
        return 1
    if options.json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
        return 0
    from funnel_tw.relay.statustext import format_nodes

    sys.stdout.write(format_nodes(answer))
    return 0


def _remove_node(options: argparse.Namespace) -> int:
    from funnel_tw.daemon.enroll import REMOVE_PATH

    answer = _relay_call(options, REMOVE_PATH, {"name": options.name})
    if not isinstance(answer, dict):
        return 1
    sys.stdout.write(f"removed node {answer.get('removed')}: its peer and routes are gone\n")
    return 0


def _write_secret(key: bytes, out: TextIO) -> int:
    _warn_if_world_readable(out)
    out.write(encode_key(key) + "\n")
    out.flush()
    return 0


def _warn_if_world_readable(out: TextIO) -> None:
    """Say what `wg genkey` says when the key is going into a file anyone can read."""
    try:
        mode = os.fstat(out.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return  # no file descriptor (a StringIO in tests): no file to warn about
    if stat.S_ISREG(mode) and mode & stat.S_IRWXO:
        sys.stderr.write(
            "Warning: writing to world accessible file.\n"
            "Consider setting the umask to 077 and trying again.\n"
        )


def _genkey(options: argparse.Namespace) -> int:
    return _write_secret(generate_private_key(), sys.stdout)


def _genpsk(options: argparse.Namespace) -> int:
    return _write_secret(generate_preshared_key(), sys.stdout)


def _pubkey(options: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read(_MAX_KEY_INPUT + 1)
    except (OSError, UnicodeDecodeError):
        text = ""
    try:
        if len(text) > _MAX_KEY_INPUT:
            raise ValueError("not a valid key: too much input")
        key = decode_key(text.strip())
    except ValueError as e:
        sys.stderr.write(f"{PROG} pubkey: {e}\n")
        return 1
    sys.stdout.write(encode_key(public_key(key)) + "\n")
    return 0


def _check_config(options: argparse.Namespace) -> int:
    path: str = options.file
    config: NodeConfig | RelayConfig
    try:
        if options.kind == "relay":
            config = load_relay_config(path)
        else:
            # a node.ini's handler plugins check their options too: each error at its line,
            # reported together with the core errors
            from funnel_tw.serve.plugins import plugin_checker

            if options.kind == "node":
                config = load_node_config(path, plugins=plugin_checker())
            else:
                config = load_config(path, plugins=plugin_checker())
    except ConfigError as e:
        for line in e.errors:
            sys.stderr.write(line + "\n")
        return 1
    # Warnings go where errors go, in the same format, but the file is usable: exit status 0.
    for line in config.warnings:
        sys.stderr.write(line + "\n")
    if isinstance(config, NodeConfig):
        summary = f"node, {_count(config.peers, 'peer')}, {_count(config.serve, 'serve port')}"
        if config.enrollment is not None:
            summary += f", joined by token ({config.enrollment})"
    else:
        summary = (
            f"relay, {_count(config.nodes, 'node')}, {_count(config.public_ports, 'public port')}"
        )
        if config.enrolled:
            summary += f", {len(config.enrolled)} of the nodes enrolled by token"
    if config.warnings:
        summary += f", {_count(config.warnings, 'warning')}"
    sys.stdout.write(f"{path}: ok ({summary})\n")
    return 0


def _count(items: tuple[object, ...], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _status(options: argparse.Namespace) -> int:
    """Ask the running node (or relay, for a relay.ini) over its local API socket."""
    from funnel_tw.daemon.localapi.address import RELAY_SOCKET_NAME
    from funnel_tw.node.status import address, client, text

    who = "node"
    if options.socket is not None:
        path = options.socket
        if os.path.basename(path) == RELAY_SOCKET_NAME:
            who = "relay"
    elif not os.path.exists(options.config):
        sys.stderr.write(
            f"{PROG} status: {options.config} not found: "
            "name the node's config with --config FILE or its socket with --socket PATH\n"
        )
        return 1
    else:
        try:
            config = load_config(options.config)
        except ConfigError as e:
            for line in e.errors:
                sys.stderr.write(line + "\n")
            return 1
        if isinstance(config, RelayConfig):
            who = "relay"
            path = str(address.socket_path(config.state_dir, RELAY_SOCKET_NAME))
        else:
            path = str(address.socket_path(config.state_dir))
    if who == "relay" and options.json:
        sys.stderr.write(f"{PROG} status: --json is the node's serve config; a relay has none\n")
        return 2
    try:
        url = address.SERVE_STATUS_PATH if options.json else address.STATUS_PATH
        doc = client.fetch(path, url, who=who)
    except address.LocalAPIUnavailable as e:
        sys.stderr.write(f"{PROG} status: {e}\n")
        return 1
    if options.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif who == "relay":
        from funnel_tw.relay.statustext import format_relay_status

        sys.stdout.write(format_relay_status(doc))
    else:
        sys.stdout.write(text.format_status(doc))
    return 0


def _demo(argv: list[str]) -> int:
    # Imported here so the key and config commands never pay for (or break on) the demo's imports.
    from funnel_tw import demo

    return demo.main(argv)
