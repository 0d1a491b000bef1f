"""``python -m vimamba``: the ``vimamba`` command line."""
from vimamba.cli.main import main
raise SystemExit(main())
