"""Which volume of the scene is which input channel of a model: MR sequences recognised from node names.

Names are split into words (``BraTS-GLI-00001-000-t1c``: ``brats``, ``gli``, ..., ``t1c``) and each word is tested
against the sequences from the most specific to the most general: FLAIR (``flair``, BraTS 2023's ``t2f``), then
contrast-enhanced T1 (``t1c``, ``t1ce``, ``t1gd``, ``post``, ``gad``...), then T2, then T1, so that a plain ``t1``
never takes the post-contrast volume and ``t2`` never takes the FLAIR. Names without separators (``t1cbrain``)
are searched for the same patterns in the same order. A channel whose name is no known sequence (``ADC``, ``CT``)
matches volumes whose name contains it. Pure Python: no Qt, no MRML.
"""

from __future__ import annotations

import re
from typing import Hashable, Optional, Sequence, TypeVar

Key = TypeVar("Key", bound=Hashable)

# (sequence, whole-word pattern, pattern inside a name without separators), most specific first.
SEQUENCES = (
    ("flair", r"flair\w*|t2f|t2flair|darkfluid", r"flair|t2f"),
    ("t1c", r"t1c\w*|t1gd\w*|t1\+c|t1post\w*|t1w?ce|post\w*|gad\w*|gd|contrast\w*|ce|enhanced", r"t1c|t1gd|t1post|gad|contrast"),
    ("t2", r"t2\w*", r"t2"),
    ("t1", r"t1\w*", r"t1"),
)


def _words(name: str) -> list[str]:
    return [word for word in re.split(r"[^a-z0-9+]+", name.lower()) if word]


def sequence_of(name: str) -> Optional[str]:
    """The MR sequence a name stands for (``flair``, ``t1c``, ``t2``, ``t1``), or None."""
    words = _words(name)
    for sequence, word_pattern, _ in SEQUENCES:
        if any(re.fullmatch(word_pattern, word) for word in words):
            return sequence
    joined = "".join(words)
    for sequence, _, inner_pattern in SEQUENCES:
        if re.search(inner_pattern, joined):
            return sequence
    return None


def matches(channel: str, volume_name: str) -> bool:
    """True when a volume's name looks like the channel: the same sequence, or (other channels) the channel's name
    inside the volume's."""
    sequence = sequence_of(channel)
    if sequence is not None:
        return sequence_of(volume_name) == sequence
    wanted = "".join(_words(channel))
    return bool(wanted) and (wanted in _words(volume_name) or wanted in "".join(_words(volume_name)))


def assign_volumes(channels: Sequence[str], volumes: Sequence[tuple[Key, str]]) -> list[Optional[Key]]:
    """A volume for each channel (None where no name fits), never the same volume twice.

    Args:
        channels: the model's channel names in its order.
        volumes: (key, node name) of the candidate volumes, in scene order.
    """
    taken: set = set()
    assigned: list[Optional[Key]] = []
    for channel in channels:
        choice = next((key for key, name in volumes if key not in taken and matches(channel, name)), None)
        if choice is not None:
            taken.add(choice)
        assigned.append(choice)
    return assigned


def repeated_volume(channels: Sequence[str], keys: Sequence[Optional[Key]]) -> Optional[tuple[str, str]]:
    """The first two channels given the same volume, or None."""
    seen: dict = {}
    for channel, key in zip(channels, keys):
        if key is None:
            continue
        if key in seen:
            return seen[key], channel
        seen[key] = channel
    return None
