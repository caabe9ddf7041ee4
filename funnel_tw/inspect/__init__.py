"""The request inspector on the node (docs/inspector.md): every HTTPS request a mount serves,
captured up to a limit, shown on a local page and an ngrok-shaped JSON API, and replayable."""
