import sys

from shardwise.kvgroup.server import main

sys.exit(main())
