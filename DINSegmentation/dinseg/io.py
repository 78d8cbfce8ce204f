"""Reading and writing medical images: NIfTI, NRRD, MHA, DICOM series, 4D cine; atomic writes."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from .errors import InputError, OutputError
from .geometry import Geometry

#: output extensions, longest first so that ".seg.nrrd" wins over ".nrrd"
OUTPUT_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".dcm")
_FRAME_TIME_TAG = "0018,1063"
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
log = logging.getLogger("dinseg")


@dataclass
class ImageVolume:
    """An image read from disk: voxels, where they lie, and what we know about them.

    array: (z, y, x) for a 3D image or (t, z, y, x) for a time series (cine), float32 or the
    file's integer type. ``geometry`` is that of one 3D frame.
    """

    array: np.ndarray
    geometry: Geometry
    modality: Optional[str] = None
    frame_spacing: Optional[float] = None
    source_files: Tuple[str, ...] = ()  # a DICOM input's files, in the order of the array's slices

    @property
    def is_time_series(self) -> bool:
        return self.array.ndim == 4

    @property
    def frames(self) -> int:
        return self.array.shape[0] if self.is_time_series else 1


def _sitk():
    """SimpleITK, with ITK's own warnings off: our checks report what matters in one line (ACDC's
    NIfTI headers, for one, make ITK print a wall of "unexpected scales in sform" for files that read
    correctly)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


def _read_sitk_image(path: Path):
    sitk = _sitk()
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series and len(files) != 1:
            raise InputError(f"{path}: no DICOM series found in this folder")
        if len(files) == 1:
            return _read_sitk_image(files[0])
        names = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len)
        if len(series) > 1:
            log.warning("%s holds %d DICOM series; reading the largest (%d files)", path, len(series), len(names))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()
        reader.LoadPrivateTagsOff()
        image = reader.Execute()
        modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else None
        return image, modality, tuple(names)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    modality = image.GetMetaData("0008|0060").strip() if image.HasMetaDataKey("0008|0060") else None
    is_dicom = reader.GetImageIO() == "GDCMImageIO" or image.HasMetaDataKey("0008|0018")
    return image, modality, (str(path),) if is_dicom else ()


def _is_multiframe_cine(image) -> bool:
    """A single multi-frame DICOM whose frames are time points (Frame Increment Pointer = Frame Time)."""
    return image.HasMetaDataKey("0028|0009") and _FRAME_TIME_TAG in image.GetMetaData("0028|0009")


def read_volume(path) -> ImageVolume:
    """Read a 3D or 4D image (file or DICOM folder) and check it is something we can segment.

    Raises :class:`InputError` with a one-line reason for a missing or unreadable path, a 2D
    or multi-component image, NaN or infinite voxels, and an empty or constant image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    sitk = _sitk()
    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti_payload(path)
    try:
        image, modality, source_files = _read_sitk_image(path)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()
        raise InputError(f"{path}: cannot read this image ({_short_reason(reason)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); a scalar medical image is needed")
    dimension = image.GetDimension()
    if dimension < 3:
        raise InputError(f"{path}: is a 2D image; a 3D volume or a 4D time series is needed")
    if dimension > 4:
        raise InputError(f"{path}: has {dimension} dimensions; 3D or 4D is supported")
    array = sitk.GetArrayFromImage(image)
    frame_spacing = None
    if dimension == 4:
        geometry = Geometry.from_sitk(image)
        frame_spacing = float(image.GetSpacing()[3])
    elif _is_multiframe_cine(image):
        # frames of one slice in time: (t, y, x) -> (t, 1, y, x)
        frame_spacing = float(image.GetSpacing()[2])
        size = image.GetSize()
        geometry = Geometry(size=(size[0], size[1], 1), spacing=(*image.GetSpacing()[:2], 1.0),
                            origin=image.GetOrigin(), direction=image.GetDirection())
        array = array[:, np.newaxis]
    else:
        geometry = Geometry.from_sitk(image)
    check_voxels(array, str(path))
    return ImageVolume(array=array, geometry=geometry, modality=modality, frame_spacing=frame_spacing,
                       source_files=source_files)


def check_nifti_payload(path: Path) -> None:
    """Check a NIfTI-1 file's voxel data ourselves: ITK zero-fills a truncated file and reads NaN/inf as 0.

    Streams the (possibly gzipped) data once; raises InputError for a truncated or corrupt file
    or for non-finite float voxels. Files that are not NIfTI-1 are left to ITK.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(348)
            endian = next((e for e in "<>" if len(header) == 348 and struct.unpack(e + "i", header[:4])[0] == 348), None)
            if endian is None:
                return
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "hh", header[70:74])
            voxel_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            remaining = int(np.prod([max(d, 1) for d in dims[1:1 + dims[0]]], dtype=np.int64)) * bitpix // 8
            stream.read(max(voxel_offset - 348, 0))
            dtype = np.dtype(endian + _NIFTI_FLOAT_TYPES[datatype]) if datatype in _NIFTI_FLOAT_TYPES else None
            if dtype is None and _integer_payload_complete(path, max(voxel_offset, 348) + remaining):
                return
            nonfinite, carry = 0, b""
            while remaining > 0:
                chunk = stream.read(min(remaining, 1 << 24))
                if not chunk:
                    raise InputError(f"{path}: the file is truncated ({remaining} bytes of voxel data missing)")
                remaining -= len(chunk)
                if dtype is not None:
                    chunk = carry + chunk
                    usable = len(chunk) // dtype.itemsize * dtype.itemsize
                    nonfinite += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk[:usable], dtype))))
                    carry = chunk[usable:]
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"{path}: cannot read this image (corrupt or truncated: {error})") from None
    if nonfinite:
        raise InputError(f"{path}: {nonfinite} voxel(s) are NaN or infinite")


def _integer_payload_complete(path: Path, expected_bytes: int) -> bool:
    """Whether an integer NIfTI holds all its voxel bytes, known without decompressing it.

    Uncompressed: the file size. Gzipped: the trailer's ISIZE (uncompressed length mod 2**32),
    which a cut file almost never matches. False means "stream the data and see".
    """
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        return size >= expected_bytes
    if size < 18:
        return False
    with open(path, "rb") as raw:
        raw.seek(-4, 2)
        return struct.unpack("<I", raw.read(4))[0] == expected_bytes % 2 ** 32


def _short_reason(lines) -> str:
    meaningful = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("sitk::")]
    return (meaningful[-1] if meaningful else "unknown format")[:200]


def check_voxels(array: np.ndarray, name: str) -> None:
    """Refuse arrays that cannot be segmented: empty, non-finite, or constant."""
    if array.size == 0:
        raise InputError(f"{name}: the image is empty (0 voxels)")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{name}: {bad} voxel(s) are NaN or infinite")
    if array.min() == array.max():
        raise InputError(f"{name}: the image is constant (every voxel is {array.flat[0]})")


def output_extension(path, extensions=OUTPUT_EXTENSIONS) -> str:
    """The recognised output extension of ``path`` (e.g. '.seg.nrrd'), or an InputError."""
    name = str(path).lower()
    for extension in extensions:
        if name.endswith(extension):
            return extension
    raise InputError(f"{path}: unsupported output type; use one of {', '.join(extensions)}")


def check_output_path(path, extensions=OUTPUT_EXTENSIONS) -> Path:
    """Refuse an output path whose type is unknown or whose folder is missing or not writable."""
    path = Path(path)
    output_extension(path, extensions)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{path}: the output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{path}: the output folder {folder} is not writable")
    try:  # os.access says yes to root on read-only file systems and /proc: try it
        handle, probe = tempfile.mkstemp(prefix=".dinseg-probe.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise InputError(f"{path}: cannot write in {folder} ({error.strerror or error})") from None
    return path


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same extension; rename it into place on success.

    On any error the temporary file is removed, so a failed write leaves nothing behind.
    """
    path = Path(path)
    name = path.name.lower()
    extension = next((e for e in OUTPUT_EXTENSIONS if name.endswith(e)), path.suffix)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name[:len(path.name) - len(extension)]}.",
                                             suffix=extension, dir=path.parent if str(path.parent) else ".")
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, _NEW_FILE_MODE)  # mkstemp makes it owner-only; give it a normal file's mode
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
    except RuntimeError as error:  # SimpleITK's writers report I/O failures this way
        raise OutputError(f"{path}: cannot write ({_short_reason(str(error).splitlines())})") from None
    finally:
        if temporary.exists():
            temporary.unlink()


def array_to_sitk(array: np.ndarray, geometry: Geometry, frame_spacing: Optional[float] = None):
    """(z, y, x) or (t, z, y, x) array on ``geometry`` -> SimpleITK image (3D or 4D)."""
    sitk = _sitk()
    if array.ndim == 3:
        image = sitk.GetImageFromArray(array)
        geometry.apply_to(image)
        return image
    image = sitk.GetImageFromArray(array, isVector=False)
    direction = np.eye(4)
    direction[:3, :3] = geometry.direction_matrix
    image.SetSpacing((*geometry.spacing, frame_spacing or 1.0))
    image.SetOrigin((*geometry.origin, 0.0))
    image.SetDirection(tuple(direction.ravel()))
    return image


def write_image(path, array: np.ndarray, geometry: Geometry, frame_spacing: Optional[float] = None,
                compress: bool = True) -> None:
    """Write an image (labelmap or intensities) atomically; NIfTI, NRRD or MHA by extension."""
    sitk = _sitk()
    image = array_to_sitk(array, geometry, frame_spacing)
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), compress)
