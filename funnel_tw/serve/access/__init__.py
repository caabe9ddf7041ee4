"""Access policies on the node: who on the internet may reach which port or mount.

The decision is a small core without Twisted (addresses, rate, credentials: `policy.py` and the
modules it uses), fed the client address, the request's headers and the time; `guard.py` is the
Twisted glue that MountRouter puts in front of a mount, in the order of docs/access.md:
deny/allow, rate limit, client certificate, credentials, forward-auth.
"""
