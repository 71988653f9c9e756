"""Where shards and run files live: local folders, http(s) and S3 reading and writing, the retry policy,
atomic writes, folder locks."""
