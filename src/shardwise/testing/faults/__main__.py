import sys

from shardwise.testing.faults.run import main

sys.exit(main())
