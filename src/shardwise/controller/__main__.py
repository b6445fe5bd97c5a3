import sys

from shardwise.controller.server import main

sys.exit(main())
