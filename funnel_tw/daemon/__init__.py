"""What both daemons share to be run for real: signals, sd_notify, metrics, access logs, and the
local API socket (``funnel-tw status``). Below ``relay/`` and ``node/``, above ``web/``."""
