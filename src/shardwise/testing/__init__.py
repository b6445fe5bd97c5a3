"""Tools for testing shardwise itself: history recording and consistency checkers."""
