"""Search: the service the bot and the CLI call (`service`), query parsing (`query`), caption
fusion (`fusion`), and the guard that decides which files may leave the host
(`sendable_files`)."""
