"""Ray refs of encoded prompts, shared by the campaign runner and the coordinator: a prompt runs through
Gemma once per farm, not once per job or per worker. Bounded (least recently used out first), as the
encodings live in Ray's object store (about 12 MB each at the 19B model's size)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

PROMPT_REFS = 256


class PromptRefs(OrderedDict[str, Any]):
    """Prompt text → Ray ref of its encoding (`stages.Contexts`)."""

    def __init__(self, capacity: int = PROMPT_REFS) -> None:
        super().__init__()
        self.capacity = capacity

    def get(self, text: str, default: Any = None) -> Any:  # type: ignore[override]
        if text in self:
            self.move_to_end(text)
            return self[text]
        return default

    def __setitem__(self, text: str, ref: Any) -> None:
        super().__setitem__(text, ref)
        self.move_to_end(text)
        while len(self) > self.capacity:
            self.popitem(last=False)
