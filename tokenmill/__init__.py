"""tokenmill: MusicLM-style token shards from audio, at scale."""
__version__ = "0.1.0"
