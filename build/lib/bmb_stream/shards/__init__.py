"""The shard format: URLs, reading with the error policy, writing, the manifest, a dataset split exported as shards."""
