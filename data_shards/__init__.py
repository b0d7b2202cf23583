"""Career records, from any input to streamed batches. Never imports trainer, eval or DeepSpeed.

Three layers, each importing only itself and the layers before it (`LAYERS` in
tests/test_imports.py): the contracts (the flat modules listed first, and cutoff.py, encode.py);
records in and out (readers/, formats.py, inputs.py, synth/, writers.py, summary.py, dataset.py);
datasets made and streamed (shard/, stream/).

Contracts, one flat module each (what the other rooms rely on):

    schema.py      the career record (one Arrow schema)
    vocab.py       the vocabulary: special ids (PAD_ID, BOS_ID, UNK_ID), building, extending
    manifest.py    manifest.json, the dataset's commit marker, and the dataset's file names
    blocks.py      the columnar encoding of a block of people (one tar member)
    splits.py      the one function that decides a person's split
    storage.py     every file access (fsspec), s3 options, retries, redaction
    quarantine.py  where malformed records go, and the read report
    errors.py      `StructuralError`: an input that cannot be read at all

Inputs:

    formats.py     the input formats registry: name -> check, plan, read, digest, describe
    inputs.py      `InputSpec` and the input blocks the sharding job's tasks read
    readers/       one reader per file format (career-code, panel, resume JSON Lines)
    synth/         the career simulator, with its exact oracle
    writers.py     records -> each layout (`LAYOUTS`), for `career synth` and tests
    summary.py     what `career inspect` prints about a corpus

Datasets:

    encode.py      records <-> vocabulary ids, and the optional fields a dataset carries
    dataset.py     a dataset read back: manifest (read once), vocabulary, manifest sha256
    shard/         the Ray sharding job (input -> shards + manifest); assumes Ray is initialised
    stream/        the streaming loader (shards -> token-budget batches), resumable; `read_split`
"""
