from phasenet.cli import main

raise SystemExit(main())
