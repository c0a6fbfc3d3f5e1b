from phasenet.cli.commands import main

raise SystemExit(main())
