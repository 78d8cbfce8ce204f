"""Files of the web front end: the data folder it may open, and uploads into its temporary folder.

No trame and no MRML here: paths are checked and bytes are stored, nothing else. Every refusal
is an :class:`~dinseg.core.errors.InputError` with a one-line message for the page.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

from ...core.errors import InputError

#: image files the page opens (a .zip is a zipped DICOM series)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip", ".dcm")
#: data-folder listing stops here (a huge share would make the page slow)
MAX_LISTED_FILES = 2000


def is_image_name(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(IMAGE_SUFFIXES) and not lower.endswith(".seg.nrrd")


class DataFolder:
    """The server's folder whose files the page may open and write next to (``dinseg web --data``)."""

    def __init__(self, root):
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise InputError(f"{root}: the data folder does not exist")

    def resolve(self, relative: str) -> Path:
        """The real path of ``relative`` (a path inside the data folder), or an InputError.

        ``..``, absolute paths and symbolic links that lead outside the folder are refused.
        """
        text = (relative or "").strip()
        if not text:
            raise InputError("no file chosen in the data folder")
        real = Path(os.path.realpath(self.root / text))
        if real != self.root and self.root not in real.parents:
            raise InputError(f"{text}: is outside the data folder; only files inside it can be opened")
        if not real.exists():
            raise InputError(f"{text}: no such file or folder in the data folder")
        return real

    def writable_target(self, path: Path) -> Path:
        """``path`` if it lies inside the data folder (for writing next to an input), else an InputError."""
        real = Path(os.path.realpath(path.parent)) / path.name
        if self.root not in real.parents:
            raise InputError(f"{path.name}: the input is not in the data folder; download the result instead")
        return real

    def image_files(self) -> List[str]:
        """Image files inside the folder (relative paths, sorted; links out of it are left out)."""
        found = []
        for folder, subfolders, files in os.walk(self.root):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                if not is_image_name(name) or self.root not in Path(os.path.realpath(path)).parents:
                    continue
                found.append(path.relative_to(self.root).as_posix())
                if len(found) >= MAX_LISTED_FILES:
                    return sorted(found)
        return sorted(found)


class UploadArea:
    """A temporary folder for uploads, received in chunks, with a size limit; removed by :meth:`close`."""

    def __init__(self, max_bytes: int, temp_root: Optional[str] = None):
        self.max_bytes = int(max_bytes)
        self.folder = Path(tempfile.mkdtemp(prefix="dinseg-web-", dir=temp_root))
        self._partial: Dict[str, Path] = {}
        self._count = 0

    def check_size(self, name: str, size: int) -> None:
        """Refuse an upload whose declared size is over the limit (before any byte is sent)."""
        if size > self.max_bytes:
            raise InputError(f"{name}: is {_megabytes(size)}, more than this server accepts "
                             f"({_megabytes(self.max_bytes)}; dinseg web --max-upload-mb)")
        if size == 0:
            raise InputError(f"{name}: the file is empty (0 bytes)")

    def begin(self, name: str, size: int) -> str:
        """Start an upload; returns its id. The file keeps only its base name."""
        self.check_size(name, size)
        base = Path(name.replace("\\", "/")).name
        if not base or base in (".", ".."):
            raise InputError(f"{name!r}: not a file name")
        self._count += 1
        upload_id = str(self._count)
        folder = self.folder / f"upload-{upload_id}"
        folder.mkdir()
        self._partial[upload_id] = folder / base
        self._partial[upload_id].touch()
        return upload_id

    def append(self, upload_id: str, chunk: bytes) -> None:
        """Add bytes to an upload; over the limit, the partial file is removed and an InputError raised."""
        path = self._partial.get(upload_id)
        if path is None:
            raise InputError("this upload was not started or was already refused")
        if path.stat().st_size + len(chunk) > self.max_bytes:
            self.discard(upload_id)
            raise InputError(f"{path.name}: is more than this server accepts ({_megabytes(self.max_bytes)}; "
                             "dinseg web --max-upload-mb)")
        with open(path, "ab") as stream:
            stream.write(chunk)

    def finish(self, upload_id: str) -> Path:
        """The complete upload: the file, or the folder a zipped DICOM series was unpacked into."""
        path = self._partial.pop(upload_id, None)
        if path is None:
            raise InputError("this upload was not started or was already refused")
        if path.name.lower().endswith(".zip"):
            return self._unzip(path)
        return path

    def discard(self, upload_id: str) -> None:
        path = self._partial.pop(upload_id, None)
        if path is not None:
            shutil.rmtree(path.parent, ignore_errors=True)

    def _unzip(self, archive: Path) -> Path:
        """Unpack a zipped DICOM series next to the archive (members may not leave the folder)."""
        target = archive.parent / (archive.name[:-len(".zip")] or "series")
        try:
            with zipfile.ZipFile(archive) as bundle:
                members = [member for member in bundle.infolist() if not member.is_dir()]
                total = sum(member.file_size for member in members)
                if total > self.max_bytes:
                    raise InputError(f"{archive.name}: unpacks to {_megabytes(total)}, more than this server "
                                     f"accepts ({_megabytes(self.max_bytes)})")
                root = Path(os.path.realpath(target))
                for member in members:
                    if root not in Path(os.path.realpath(target / member.filename)).parents:
                        raise InputError(f"{archive.name}: member {member.filename!r} points outside the archive")
                target.mkdir()
                for member in members:
                    destination = target / member.filename
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with bundle.open(member) as source, open(destination, "wb") as output:
                        shutil.copyfileobj(source, output)
        except zipfile.BadZipFile:
            raise InputError(f"{archive.name}: is not a readable zip archive") from None
        finally:
            archive.unlink()
        if not members:
            raise InputError(f"{archive.name}: the archive is empty")
        return target

    def close(self) -> None:
        """Remove the folder and everything uploaded."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
