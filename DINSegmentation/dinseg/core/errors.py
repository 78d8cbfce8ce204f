"""Errors that reach the user as one clear line (the CLI prints them and exits non-zero)."""

import re

#: a reading library's reason (in brackets at the end of a message) -> the user's words
PLAIN_WORDS = (
    (re.compile(r"gzip|compressed file ended|end of (the )?stream|crc check|truncated|unexpected end", re.I),
     "the file is cut short or damaged"),
    (re.compile(r"could not create io object|unknown format|imageio", re.I),
     "not an image format dinseg reads (NIfTI, NRRD, MHA, zipped DICOM)"),
)


class DinsegError(Exception):
    """Base of the errors whose message is meant for the user."""


class InputError(DinsegError, ValueError):
    """The input image, data set or path cannot be used."""


class ModelError(DinsegError):
    """A model card or its weights are missing, unknown, or fail their checksum."""


class ConfigError(DinsegError, ValueError):
    """A configuration (training, enhancement, network) has an unknown key or a bad value."""


class OutputError(DinsegError, OSError):
    """An output file cannot be written (read-only or full file system, no permission); nothing was left."""


def in_plain_words(message: str) -> str:
    """A reading error whose library reason, in brackets at its end, is said in the user's words.

    "ct.nii.gz: cannot read this image (Not a gzipped file (b'Th'))" ->
    "ct.nii.gz: cannot read this image: the file is cut short or damaged"; other messages unchanged.
    """
    match = re.search(r"\((.*)\)$", message)
    if match is None:
        return message
    for pattern, words in PLAIN_WORDS:
        if pattern.search(match.group(1)):
            return message[:match.start()].rstrip() + ": " + words
    return message
