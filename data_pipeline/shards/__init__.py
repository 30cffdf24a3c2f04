"""Token shards: the writer (`shard`), its journal, the manifest, the reader, `inspect`."""
