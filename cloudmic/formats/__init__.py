"""Pure parsing of the file formats the datasets are published in (no store, no dask)."""
