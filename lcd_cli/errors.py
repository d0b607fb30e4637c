"""The one exception type lcd raises for bad input, and how it reads.

Every user-facing failure is an :class:`LcdError` naming the file, the key and the reason,
plus a hint on how to fix it. The CLI prints it as one paragraph and exits non-zero; a
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class LcdError(Exception):
    """Bad input or an unrecoverable condition, explained for the user.

    Args:
        reason: what is wrong, as a sentence.
        file: the file concerned, if any.
        key: the tensor key (or config field) concerned, if any.
        hint: how to fix it, if known.
        exit_code: process exit code the CLI uses (2 = bad input, 1 = check failed).
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | Path | None = None,
        key: str | None = None,
        hint: str | None = None,
        exit_code: int = 2,
    ) -> None:
        self.reason = reason
        self.file = str(file) if file is not None else None
        self.key = key
        self.hint = hint
        self.exit_code = exit_code
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.file:
            where.append(f"file '{self.file}'")
        if self.key:
            where.append(f"key '{self.key}'")
        text = (", ".join(where) + ": " if where else "") + self.reason.rstrip(".") + "."
        if self.hint:
            text += " " + self.hint.rstrip(".") + "."
        return text
