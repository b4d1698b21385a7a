from vilab.cli import main

raise SystemExit(main())
