"""Client: open stores as xarray, stream aligned patches, read WebDataset shards."""
