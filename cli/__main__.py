"""``python -m cli``: the ``healthpredict`` command."""

from cli.main import main

raise SystemExit(main())
