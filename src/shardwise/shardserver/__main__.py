import sys

from shardwise.shardserver.server import main

sys.exit(main())
