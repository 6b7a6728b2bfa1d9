"""How data sits in the store: chunk and shard shapes, codecs, group templates."""
