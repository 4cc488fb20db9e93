"""Search: the service the bot and the CLI call, query parsing, and the guard that decides
which files may leave the host."""
