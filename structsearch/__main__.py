from structsearch.cli import main

raise SystemExit(main())
