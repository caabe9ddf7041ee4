"""twisted.plugin drop-in: makes ``handler = echo`` available to funnel-tw.

``twisted.plugin.getPlugins(IHandlerPlugin)`` imports every module in a ``twisted/plugins``
directory and collects the module-level objects that provide both ``IPlugin`` and the
interface asked for. Keep this module small: it is imported whenever plugins are listed (and
its findings are cached in ``dropin.cache`` next to it).
"""

from funnel_tw_echo.handler import EchoPlugin

echo = EchoPlugin()
