"""python -m tidewire: the command line."""

from tidewire.apps.cli.main import main

raise SystemExit(main())
