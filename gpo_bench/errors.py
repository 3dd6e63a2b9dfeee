"""Every error class of the package, in one leaf module that imports nothing of it. Each is a user's mistake or
the machine's state (the CLI prints it on one line and exits 2); its message names the file, row, flag or field
at fault and the values that would be valid."""

from __future__ import annotations

import difflib


class DataError(ValueError):
    """Bad input data: the message names the file/row or the group/item at fault."""


class CardError(ValueError):
    """A card that does not follow its schema."""


class PluginError(ValueError):
    """An include folder or plugin that cannot be used; the message names the file or entry point."""


class RunFileError(ValueError):
    """A run folder whose result.json cannot be used."""


class PromptTooLongError(RuntimeError):
    """Even without any context item, the prompt does not fit the model's context."""


class LanguageModelError(RuntimeError):
    """A language model that cannot run as its method's settings ask: too large for the machine's memory, no
    chat template where the chat format is asked for, an adapter whose training diverged."""


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the closest known names."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def unknown_name(kind: str, name: str, known: list[str]) -> UnknownNameError:
    """The error for an unknown `name` of `kind`, suggesting the closest of `known` and listing them all."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listed = f"Known: {', '.join(sorted(known))}." if known else "There are none."
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} {listed}")
