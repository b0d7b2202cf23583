"""A dataset as its readers see it: its URL, manifest, vocabulary and the manifest's sha256.

`load_dataset` reads `manifest.json` once (parsed, and hashed from the same bytes) and
`vocab.json`, and refuses a vocabulary that is not the manifest's. Training, evaluation and the
commands all describe a dataset this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.manifest import Manifest, read_manifest
from data_shards.vocab import Vocabulary

#: Every field a dataset may carry besides the job, in the order models embed them: the year's
#: (calendar year, education), then the person's (blocks.PERSON_FIELDS). CAREER embeds them all.
COVARIATES = ("year", "education", "location", "gender", "ethnicity", "birth_year")


@dataclass(frozen=True)
class Dataset:
    url: str
    manifest: Manifest
    vocab: Vocabulary
    manifest_sha: str  # sha256 of manifest.json: which dataset a package was trained on

    @property
    def covariates(self) -> tuple[str, ...]:
        return covariates_of(self.manifest)


def load_dataset(data_url: str, storage_options=None) -> Dataset:
    manifest, manifest_bytes = read_manifest(data_url, storage_options)
    vocab = Vocabulary.load(storage.join(data_url, "vocab.json"), storage_options)
    if vocab.hash != manifest.vocab_hash:
        raise StructuralError(
            "vocab.json does not match the manifest", path=storage.redact(data_url)
        )
    return Dataset(data_url, manifest, vocab, hashlib.sha256(manifest_bytes).hexdigest())


def covariates_of(manifest: Manifest, known: Sequence[str] = COVARIATES) -> tuple[str, ...]:
    """The covariates of `known` (a model's; all of them by default) this dataset has, in
    `known`'s order. A model kind's: `trainer.models.registry.covariates_of`."""
    present = set(manifest.fields["token_fields"]) | set(manifest.fields["person_fields"])
    return tuple(c for c in known if c in present)
