"""Ingest: plan shard-aligned units, write them to staging, verify, publish, catalog."""

from cloudmic.ingest.run import IngestReport, ingest

__all__ = ["IngestReport", "ingest"]
