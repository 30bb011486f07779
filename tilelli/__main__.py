from tilelli.cli import main

raise SystemExit(main())
