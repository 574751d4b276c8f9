from moeperf.cli import main

raise SystemExit(main())
