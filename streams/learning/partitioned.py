"""A model learned apart per merchant and input partition, so that workers share it.

A reward is learned into the part of the partition its customer is on (key
``merchant:partition``, `learning_key`), so each part has a single writer: the worker that
owns the partition, which also remembers the reward ids it learned (a replayed reward is a
no-op). Parts learned elsewhere come in with `PartitionedModels.load` (e.g. read from a
changelogged table); the model a worker serves for a merchant is the prior plus the sum of the
merchant's parts (statistics are sums: ``streams.learning.linear``), rebuilt when a part of
the merchant changed. Each part is plain JSON (`PartitionedModels.entry`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

Part = TypeVar("Part")

#: what a part that cannot be used raises when it is read (another format, other features)
UNUSABLE = (ValueError, KeyError, TypeError, AttributeError)


def learning_key(merchant_id: str, partition: int) -> str:
    """The key of one merchant's statistics learned on one input partition."""
    return f"{merchant_id}:{partition}"


def merchant_of(key: str) -> str:
    return key.rsplit(":", 1)[0]


class PartitionedModels(ABC, Generic[Part]):
    """Parts per ``merchant:partition`` (module doc) and the merged models built from them."""

    def __init__(self) -> None:
        self.parts: dict[str, Part] = {}

    @abstractmethod
    def entry(self, key: str) -> dict:
        """The part's JSON (an empty dict when there is none)."""

    @abstractmethod
    def part_of(self, entry: dict) -> Part:
        """The part of an `entry`; raises one of `UNUSABLE` when it cannot be used."""

    @abstractmethod
    def set_merged(self, merchant_id: str, parts: list[Part]) -> None:
        """The merchant's model becomes the prior plus these parts' statistics."""

    def load(self, entries: Mapping[str, dict]) -> list[str]:
        """Replace parts by these entries (e.g. as read from the table) and rebuild their
        merchants' models; returns the keys of unusable entries (left out)."""
        unusable = []
        for key, entry in entries.items():
            try:
                self.parts[key] = self.part_of(entry)
            except UNUSABLE:
                self.parts.pop(key, None)
                unusable.append(key)
        self.merge(entries)
        return unusable

    def merge(self, keys: Iterable[str]) -> None:
        """Rebuild the models of the merchants of these parts from all their parts."""
        for merchant_id in sorted({merchant_of(key) for key in keys}):
            self.rebuild(merchant_id)

    def rebuild(self, merchant_id: str) -> None:
        """Rebuild the merchant's model from all its parts."""
        parts = [part for key, part in self.parts.items() if merchant_of(key) == merchant_id]
        self.set_merged(merchant_id, parts)
