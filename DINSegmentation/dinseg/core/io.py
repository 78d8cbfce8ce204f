"""Reading and writing medical images: NIfTI, NRRD, MHA, DICOM series, 4D cine; atomic writes."""

from __future__ import annotations

import contextlib
import gzip
import json
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
#: bytes per voxel of each NIfTI datatype, which is what ITK reads by (bitpix is not; a corrupt one is ignored)
_NIFTI_VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                      1536: 16, 1792: 16, 2048: 32, 2304: 4}
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
        by_series = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid) for uid in series}
        chosen = max(by_series, key=lambda uid: len(by_series[uid]))
        names = by_series[chosen]
        if len(series) > 1:
            others = ", ".join(f"{uid} ({len(files)} files)" for uid, files in by_series.items() if uid != chosen)
            log.warning("%s holds %d DICOM series; reading the largest, %s (%d files); not read: %s. Give a "
                        "folder with one series to choose another", path, len(series), chosen, len(names), others)
        if len(names) == 1:  # one file, as if given directly (a multi-frame cine stays a cine)
            return _read_sitk_image(Path(names[0]))
        _check_dicom_pixel_data(names)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()
        reader.LoadPrivateTagsOff()
        image = reader.Execute()
        modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else None
        return image, modality, tuple(names)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    _check_declared_size(path, reader.GetSize(), reader.GetNumberOfComponents())
    if _is_dicom_file(path):
        _check_dicom_pixel_data([path])
    image = reader.Execute()
    modality = image.GetMetaData("0008|0060").strip() if image.HasMetaDataKey("0008|0060") else None
    return image, modality, (str(path),) if _is_dicom_file(path) else ()


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: "DICM" after the 128-byte preamble."""
    with open(path, "rb") as stream:
        stream.seek(128)
        return stream.read(4) == b"DICM"


def _check_dicom_pixel_data(files) -> None:
    """A DICOM file whose Rows, Columns, frames or bit depth contradict its pixel data is refused
    (GDCM would read past or short of the data). Needs pydicom; skipped without it, and for
    compressed (encapsulated) pixel data, whose length is not fixed."""
    try:
        import pydicom
    except ImportError:
        return
    for path in files:
        try:
            dataset = pydicom.dcmread(path, defer_size=256, stop_before_pixels=False)
            element = dataset.get_item("PixelData")
            syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
            if element is None or (syntax is not None and syntax.is_compressed):
                continue
            length = element.length if hasattr(element, "length") else len(element.value)
            declared = dicom_pixel_bytes(dataset)
        except Exception:  # unreadable to pydicom: GDCM decides, as before
            continue
        if length != declared + declared % 2:
            raise InputError(f"{path}: its pixel data holds {length} bytes, but Rows x Columns x frames x "
                             f"bits declare {declared}: a corrupt or contradictory header")


def dicom_pixel_bytes(dataset) -> int:
    """The bytes of uncompressed pixel data a DICOM header declares (before the even-length pad)."""
    bits = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("NumberOfFrames", 1) or 1)
            * int(dataset.BitsAllocated) * int(dataset.get("SamplesPerPixel", 1) or 1))
    return (bits + 7) // 8


#: the most voxels an input may declare (16 GiB of float32): a corrupt header must not exhaust memory
MAX_INPUT_VOXELS = 1 << 32


def _check_declared_size(path: Path, size, components: int) -> None:
    voxels = int(np.prod([int(s) for s in size], dtype=np.float64)) * max(int(components), 1)
    if voxels > MAX_INPUT_VOXELS:
        raise InputError(f"{path}: declares {' x '.join(map(str, size))} voxels, more than dinseg reads "
                         f"({MAX_INPUT_VOXELS} at most): a corrupt header?")


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
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes)")
    _sitk()  # ITK's own warnings off before anything reads the file
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
    array = pixel_array(image)
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
    check_extent(geometry, str(path))
    check_voxels(array, str(path))
    return ImageVolume(array=array, geometry=geometry, modality=modality, frame_spacing=frame_spacing,
                       source_files=source_files)


class _PixelMemory:
    """A SimpleITK image's pixel memory as numpy's array interface; arrays made from it keep the
    image alive (SimpleITK's own view does not)."""

    def __init__(self, image):
        self.image = image
        interface = dict(_sitk().GetArrayViewFromImage(image).__array_interface__)
        interface["data"] = (interface["data"][0], False)  # writable: the image is ours alone
        self.__array_interface__ = interface


def pixel_array(image) -> np.ndarray:
    """A SimpleITK image's voxels as a writable (z, y, x) or (t, z, y, x) numpy array without a
    copy; the image lives as long as the array or any view of it."""
    return np.asarray(_PixelMemory(image))


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
            remaining = (int(np.prod([max(d, 1) for d in dims[1:1 + dims[0]]], dtype=np.int64))
                         * _NIFTI_VOXEL_BYTES.get(datatype, bitpix // 8))
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


#: the longest extent along any axis an image may have: more is a corrupt spacing, which would
#: make the network's grid (and memory) explode
MAX_EXTENT_MM = 3000.0


def check_extent(geometry: Geometry, name: str) -> None:
    """Refuse a voxel spacing that is not positive or gives an extent no patient has."""
    if min(geometry.spacing) <= 0:
        raise InputError(f"{name}: voxel spacing {geometry.spacing} mm is not positive: a corrupt header?")
    extent = max(size * spacing for size, spacing in zip(geometry.size, geometry.spacing))
    if extent > MAX_EXTENT_MM:
        raise InputError(f"{name}: spans {extent:.0f} mm ({' x '.join(map(str, geometry.size))} voxels of "
                         f"{' x '.join(f'{s:g}' for s in geometry.spacing)} mm), more than any body: a corrupt "
                         "spacing?")


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


class IncompleteFile(Exception):
    """The bytes on disk are not the whole file meant (a full disk that a writer did not report)."""


def _sync(path: Path) -> None:
    """Flush the file's data to the disk (a full or failing disk raises OSError here)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _space_hint(path: Path) -> str:
    try:
        stats = os.statvfs(path.parent if str(path.parent) else ".")
    except (OSError, AttributeError):
        return ""
    return " (no space left on device?)" if stats.f_bavail * stats.f_frsize < (1 << 20) else ""


def _gzip_stream_complete(stream, wbits: int = 16 + zlib.MAX_WBITS) -> bool:
    """Whether a gzip (or, with wbits=MAX_WBITS, zlib) stream read from ``stream`` ends properly."""
    inflater = zlib.decompressobj(wbits)
    try:
        while not inflater.eof:
            chunk = stream.read(1 << 20)
            if not chunk:
                return False
            inflater.decompress(chunk, 1 << 24)
            while inflater.unconsumed_tail and not inflater.eof:
                inflater.decompress(inflater.unconsumed_tail, 1 << 24)
    except zlib.error:
        return False
    return True


_NRRD_TYPES = {"uchar": 1, "unsigned char": 1, "uint8": 1, "char": 1, "signed char": 1, "int8": 1, "short": 2,
               "int16": 2, "ushort": 2, "unsigned short": 2, "uint16": 2, "int": 4, "int32": 4, "uint": 4,
               "unsigned int": 4, "uint32": 4, "float": 4, "double": 8, "longlong": 8, "int64": 8,
               "ulonglong": 8, "uint64": 8}
_META_TYPES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8}


def _header_fields(stream, separator: str, last_key: Optional[str]) -> dict:
    """``key<separator>value`` header lines up to a blank line (NRRD) or up to ``last_key`` (MetaImage)."""
    fields = {}
    while True:
        line = stream.readline()
        if not line:
            raise IncompleteFile("the header is cut short")
        text = line.decode("latin-1").strip()
        if not text and last_key is None:
            return fields
        key, found, value = text.partition(separator)
        if found:
            fields[key.strip().lower()] = value.strip()
            if last_key is not None and key.strip().lower() == last_key:
                return fields


def _raw_size_complete(stream, expected: int) -> bool:
    here = stream.tell()
    stream.seek(0, 2)
    return stream.tell() - here >= expected


def verify_written(path: Path, extension: str) -> None:
    """Check that a file just written holds all its bytes: compressed streams end, raw data sizes
    match their headers, PNG ends in IEND, JSON parses, DICOM's pixel data is whole. Raises
    IncompleteFile with the reason."""
    if path.stat().st_size == 0:
        raise IncompleteFile("the written file is empty")
    if extension in (".nii.gz", ".nii"):
        try:
            check_nifti_payload(path)
        except InputError:
            raise IncompleteFile("the written file is incomplete") from None
        if extension == ".nii.gz":
            with open(path, "rb") as stream:
                if not _gzip_stream_complete(stream):
                    raise IncompleteFile("the written file's compressed data is incomplete")
    elif extension in (".nrrd", ".seg.nrrd"):
        with open(path, "rb") as stream:
            fields = _header_fields(stream, ":", None)
            if fields.get("encoding") == "gzip" and not _gzip_stream_complete(stream):
                raise IncompleteFile("the written file's compressed data is incomplete")
            if fields.get("encoding") == "raw":
                count = int(np.prod([int(v) for v in fields.get("sizes", "0").split()]))
                if not _raw_size_complete(stream, count * _NRRD_TYPES.get(fields.get("type", ""), 1)):
                    raise IncompleteFile("the written file's data is incomplete")
    elif extension == ".mha":
        with open(path, "rb") as stream:
            fields = _header_fields(stream, "=", "elementdatafile")
            if fields.get("compresseddata", "False").lower() == "true":
                if not _gzip_stream_complete(stream, zlib.MAX_WBITS):
                    raise IncompleteFile("the written file's compressed data is incomplete")
            else:
                count = int(np.prod([int(v) for v in fields.get("dimsize", "0").split()]))
                channels = int(fields.get("elementnumberofchannels", "1"))
                if not _raw_size_complete(stream, count * channels * _META_TYPES.get(fields.get("elementtype"), 1)):
                    raise IncompleteFile("the written file's data is incomplete")
    elif extension == ".png":
        with open(path, "rb") as stream:
            stream.seek(-12, 2)
            if stream.read(12)[4:8] != b"IEND":
                raise IncompleteFile("the written picture is incomplete")
    elif extension == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise IncompleteFile("the written JSON is incomplete") from None
    elif extension == ".dcm":
        _verify_dicom(path)
    elif extension == ".pt":
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    raise IncompleteFile("the written weights are corrupt")
        except zipfile.BadZipFile:
            raise IncompleteFile("the written weights are incomplete") from None


def _verify_dicom(path: Path) -> None:
    import pydicom

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.get("PixelData")
    except Exception:  # pydicom raises many types for a cut file; all mean "incomplete"
        raise IncompleteFile("the written DICOM object is incomplete") from None
    if pixels is not None and len(pixels) < dicom_pixel_bytes(dataset):
        raise IncompleteFile("the written DICOM object's pixel data is incomplete")


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same extension; once the writer is done, sync
    it, check that the bytes on disk are the whole file (:func:`verify_written`), and rename it
    over ``path``. On any failure (here or in the writer, including an interrupt) the temporary
    file is removed and an :class:`OutputError` names the file and the cause: ``path`` keeps its
    old content, if any.
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
        _sync(temporary)
        verify_written(temporary, extension)
        os.chmod(temporary, _NEW_FILE_MODE)  # mkstemp makes it owner-only; give it a normal file's mode
        os.replace(temporary, path)
        _sync_folder(path.parent if str(path.parent) else Path("."))
    except IncompleteFile as error:
        raise OutputError(f"{path}: {error}{_space_hint(path)}") from None
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
