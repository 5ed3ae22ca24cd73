"""Which evaluated images a model was trained on: a compact record in the model card.

Training writes, into each ``training_data`` entry of the card, the salted sha256 of every
training patient's id (``training_patients``): a random salt made once per card, the first
:data:`DIGEST_HEX` hex digits of ``sha256(salt + ":" + patient_id)``, sorted. ``xrayage
evaluate`` hashes the evaluated patients with the same salt and warns where they meet.

The record names no patient and cannot be joined with another card's (each has its own
salt), nor looked up in precomputed tables. It is not a secret, though: whoever holds the
card and a list of candidate ids (NIH's ids are public numbers) can test each candidate,
as ``evaluate`` does. It tells who was in the training set, never anything else.

A card without the record (older cards) is matched by source: images of a source the card
says it was trained on may be in-sample.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

DIGEST_HEX = 12
"""Hex digits kept of each digest (48 bits: no collision expected below millions of ids)."""

RECORD_KEY = "training_patients"
"""The key of the record in a ``training_data`` entry."""


def patient_digest(salt: str, patient_id: str) -> str:
    """The truncated, salted sha256 of one patient id.

    >>> patient_digest("00", "nih:1")
    '2d0d29856271'
    """
    return hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()[:DIGEST_HEX]


def new_salt() -> str:
    """A random salt (32 hex digits), made once per model card."""
    return secrets.token_hex(16)


def patient_record(patient_ids: Iterable[str], salt: str) -> dict[str, Any]:
    """The ``training_patients`` record of a set of patient ids.

    Parameters
    ----------
    patient_ids : iterable of str
        The training patients (repeats and empty ids ignored).
    salt : str
        The card's salt (:func:`new_salt`).

    Returns
    -------
    dict
        ``method``, ``salt`` and the sorted ``sha256`` digests.
    """
    digests = sorted({patient_digest(salt, p) for p in patient_ids if p})
    return {"method": f"sha256(salt + ':' + patient_id), first {DIGEST_HEX} hex digits",
            "salt": salt, "sha256": digests}


def in_sample_notes(training_data: Sequence[dict[str, Any]], patient_ids: Sequence[str],
                    sources: Sequence[str]) -> list[str]:
    """Warnings for evaluated images whose patients (or source) the model was trained on.

    Parameters
    ----------
    training_data : sequence of dict
        The model card's ``training_data``.
    patient_ids, sources : sequence of str
        Per evaluated image.

    Returns
    -------
    list of str
        Empty when no overlap is known.
    """
    n = len(patient_ids)
    notes: list[str] = []
    hashed = [d[RECORD_KEY] for d in training_data if isinstance(d.get(RECORD_KEY), dict)]
    if hashed:
        tables = [(r["salt"], set(r["sha256"])) for r in hashed]
        hits = [p for p in patient_ids
                if p and any(patient_digest(salt, p) in table for salt, table in tables)]
        if hits:
            notes.append(
                f"IN-SAMPLE: {len(hits)} of {n} evaluated images ({len(set(hits))} patients) "
                "are of patients the model was trained on; their errors are optimistic "
                "(evaluate on patients it never saw, e.g. --split val --run-dir RUN, or use "
                "the card's out-of-fold metrics)")
        return notes
    trained = {s for d in training_data for s in (d.get("sources") or []) if s}
    overlap = sorted({s for s in sources if s in trained})
    if overlap:
        count = sum(s in trained for s in sources)
        notes.append(
            f"POSSIBLY IN-SAMPLE: {count} of {n} evaluated images are of the source(s) "
            f"{', '.join(overlap)} the model was trained on, and its card does not record "
            "which patients; errors on images it trained on are optimistic")
    return notes


__all__ = ["DIGEST_HEX", "RECORD_KEY", "in_sample_notes", "new_salt", "patient_digest",
           "patient_record"]
