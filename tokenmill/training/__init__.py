"""Training side: shard-URL readers, the three MusicLM stages, trainers and generation.

Empty until the training issue; the shard formats it will read are defined in tokenmill.schemas.
"""
