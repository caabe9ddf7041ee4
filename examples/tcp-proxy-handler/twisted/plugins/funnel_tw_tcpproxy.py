"""twisted.plugin drop-in: makes ``handler = tcp-proxy`` available to funnel-tw."""

from funnel_tw_tcpproxy.handler import TCPProxyPlugin

tcp_proxy = TCPProxyPlugin()
