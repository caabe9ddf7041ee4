"""`python -m funnel_tw`: the same as the `funnel-tw` command."""

from funnel_tw.cli import main

raise SystemExit(main())
