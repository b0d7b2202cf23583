"""Career records: schema, readers, vocabularies, the simulator. Never imports trainer, eval or DeepSpeed."""
