"""Training side: shard-URL readers (data), per-stage crops (crops) and sequences (stages), the
stage Transformer (model), trainers (train, batches, checkpoint) and generation (generate); plus
the built-in codec and MuLan trainers (codec_train, mulan_train)."""
