"""What one import may allocate (DESIGN §7): the elements its file holds, plus GROWTH.

Importers count every element they are about to make from the file's own tensors --
ONNX constants they fold, checkpoint tensors rebuilt from a storage -- before making
it, against one Budget per import. Counting the total, not each tensor, is what makes
many small requests fail like one huge one: a chain of Concats that doubles a constant,
or many views that each repeat one storage, cannot add up to gigabytes from a few
hundred kilobytes.
"""
from __future__ import annotations

from lstm_engine.errors import ModelError

GROWTH = 1 << 26  # elements (256 MB of float32) an import may make beyond those its file holds


class Budget:
    def __init__(self):
        self.held = 0  # elements of the tensors the file holds
        self.made = 0  # elements the import has made from them
        self._keys = set()

    def hold(self, elements: int, key=None) -> None:
        """Count a tensor that the file itself holds (its size bounds these); one with a
        `key` only the first time, as many tensors may view one storage."""
        if key is None or key not in self._keys:
            self.held += int(elements)
            if key is not None:
                self._keys.add(key)

    def spend(self, elements: int, what: str) -> None:
        """Count `elements` about to be made; ModelError, before anything is allocated,
        when they would take the import past its budget."""
        total = self.made + int(elements)
        if total > self.held + GROWTH:
            raise ModelError(f"{what}: the import would create {total} elements from a file that holds "
                             f"{self.held}, more than the {GROWTH} beyond it any import may create; refused "
                             "before allocating")
        self.made = total
