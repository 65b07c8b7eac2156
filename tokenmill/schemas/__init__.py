"""The one definition of records, rates, shard layout and manifests. No Beam, no torch."""
