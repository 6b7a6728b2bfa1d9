"""Storage: URLs to stores, credentials, and the embedded S3 server."""
