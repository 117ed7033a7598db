"""Durable storage of the core's records: compaction rules here, the signed log file in log.py."""
