from shardwise.cli.main import entry

entry()
