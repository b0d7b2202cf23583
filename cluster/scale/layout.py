"""Where a scaling study writes (see `cluster.scale.study`), and its JSON files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_shards import storage


@dataclass
class StudyLayout:
    url: str

    def dataset(self, name: str) -> str:
        return storage.join(self.url, "datasets", name)

    def point(self, name: str) -> str:
        return storage.join(self.url, "points", name)

    def finetune(self, name: str, survey: str) -> str:
        return storage.join(self.point(name), f"finetune-{survey}")

    def survey_result(self, name: str) -> str:
        return storage.join(self.point(name), "survey.json")

    def file(self, name: str) -> str:
        return storage.join(self.url, name)


def write_json(url: str, payload: Any, storage_options) -> None:
    """A study's JSON (values numpy may give are written as text)."""
    storage.write_json(url, payload, storage_options, default=str)
