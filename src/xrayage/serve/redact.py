"""Keep patient identifiers out of every log line, whatever the verbosity.

xrayage's own messages never name a patient, but third-party libraries do at DEBUG:
pynetdicom prints each C-STORE's Affected SOP Instance UID, and highdicom or pydicom
may quote header values. :func:`install` adds a :class:`RedactingFilter` to the
loggers of those libraries (and to xrayage's), so the records are rewritten before
any handler (a file, the console, pytest's caplog) sees them:

- every UID (dotted digits) outside the DICOM standard's own root ``1.2.840.10008``
  (SOP classes and transfer syntaxes stay readable) becomes ``uid#<12 hex digits>``,
  the same short SHA-256 label the node uses for instances;
- every DICOM date (``YYYYMMDD`` between 1850 and 2200) becomes ``<date>``;
- ``PatientName``/``PatientID``/``PatientBirthDate``-style ``keyword: value`` or
  ``keyword=value`` pairs lose their value.
"""

from __future__ import annotations

import hashlib
import logging
import re

_UID = re.compile(r"(?<![\w.])(\d+(?:\.\d+){3,})(?![\w.])")
_DATE = re.compile(r"(?<!\d)(18[5-9]\d|19\d\d|2[01]\d\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
_FIELD = re.compile(
    r"((?:Patient|Other ?Patient|Issuer ?Of ?Patient|Accession|Referring|Performing|"
    r"Operators?|Institution|Study ?ID|Physician)[\w ]*?(?:Name|ID|IDs|Date|Number|Address)?"
    r"\s*[:=]\s*)([^,;\n\]\)]+)", re.IGNORECASE)
_STANDARD_ROOT = "1.2.840.10008."

LOGGERS = ("pynetdicom", "pydicom", "highdicom", "xrayage", "uvicorn", "fastapi")
"""Logger name prefixes whose records are redacted."""


def uid_tag(uid: str) -> str:
    """A short, non-reversible label of a UID (12 hex digits of its SHA-256)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def redact(text: str) -> str:
    """Replace patient UIDs, dates and named identifying fields in one message.

    Examples
    --------
    >>> redact("Affected SOP Instance UID : 1.2.3.4.5.6")
    'Affected SOP Instance UID : uid#ffaff041ab50'
    >>> redact("Transfer syntax 1.2.840.10008.1.2.1 from 127.0.0.1")
    'Transfer syntax 1.2.840.10008.1.2.1 from 127.0.0.1'
    """
    def uid(match: re.Match[str]) -> str:
        value = match.group(1)
        parts = value.split(".")
        if len(parts) == 4 and all(len(p) <= 3 and int(p) <= 255 for p in parts):
            return value  # an IPv4 address
        return value if value.startswith(_STANDARD_ROOT) else f"uid#{uid_tag(value)}"

    text = _UID.sub(uid, text)
    text = _DATE.sub("<date>", text)
    return _FIELD.sub(lambda m: m.group(1) + "<redacted>", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with :func:`redact` (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep only its template
            message = str(record.msg)
        clean = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record.msg, record.args = clean, ()
        return True


_FILTER = RedactingFilter()


def install() -> None:
    """Add the filter to every logger under :data:`LOGGERS` that exists now, and to the roots.

    Also adds it to the root logger's handlers (the CLI's console), which catches loggers
    made later. Idempotent. :mod:`xrayage.serve.node` and :mod:`xrayage.serve.app` call
    it on import and again once their lazily imported libraries are loaded.
    """
    names = [n for n in list(logging.Logger.manager.loggerDict)
             if n.split(".")[0] in LOGGERS]
    for name in {*names, *LOGGERS}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in logging.getLogger().handlers:  # the console of the CLI: later loggers too
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


__all__ = ["LOGGERS", "RedactingFilter", "install", "redact", "uid_tag"]
