"""Ingest: manifest, decode, de-identify, sample and write Parquet shards."""
