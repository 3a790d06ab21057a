from kindrobots.cli import main

raise SystemExit(main())
