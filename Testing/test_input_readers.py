"""The input side of ``dinseg.core.io``: what ``read_volume`` refuses and how it reads what it accepts, and
the checks behind it (NIfTI payloads streamed ourselves, declared sizes, extents, voxel values), each with
its exact one-line message. Small files made here, fast (these are the tests mutation testing runs for
the readers; the same refusals through the CLI are in test_segment.py and test_fuzz.py)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CINE_DICOM
from dinseg.core.errors import InputError
from dinseg.core.geometry import Geometry
from dinseg.core.io import (MAX_EXTENT_MM, MAX_INPUT_VOXELS, _check_declared_size, _integer_payload_complete,
                            check_extent, check_nifti_payload, check_voxels, read_volume)


def _refusal(call, *args) -> str:
    with pytest.raises(InputError) as refused:
        call(*args)
    return str(refused.value)


def _nifti(path: Path, data: np.ndarray, datatype: int, endian: str = "<", vox_offset: int = 352,
           dims=None, extension: bytes = b"") -> Path:
    """A NIfTI-1 file made by hand (the header fields check_nifti_payload reads, ``endian`` byte order),
    gzipped when the name ends in .gz (any case)."""
    header = bytearray(348)
    struct.pack_into(endian + "i", header, 0, 348)
    shape = dims if dims is not None else data.shape[::-1]
    struct.pack_into(endian + "8h", header, 40, len(shape), *shape, *([7] * (7 - len(shape))))  # 7: unused dims
    struct.pack_into(endian + "hh", header, 70, datatype, data.dtype.itemsize * 8)
    struct.pack_into(endian + "8f", header, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into(endian + "f", header, 108, float(vox_offset))
    header[344:348] = b"n+1\0"
    gap = extension.ljust(max(vox_offset - 348, 0), b"\0")
    payload = bytes(header) + gap + data.astype(data.dtype.newbyteorder(endian)).tobytes()
    path.write_bytes(gzip.compress(payload, 1) if path.name.lower().endswith(".gz") else payload)
    return path


def _floats(dtype=np.float32, bad=()) -> np.ndarray:
    data = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(dtype)
    for index, value in bad:
        data.flat[index] = value
    return data


# ---- check_nifti_payload --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["f.nii", "f.nii.gz", "F.NII.GZ"])
@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("dtype, datatype", [(np.float32, 16), (np.float64, 64)])
def test_nan_and_infinite_float_voxels_are_counted(tmp_path, name, endian, dtype, datatype):
    whole = _nifti(tmp_path / name, _floats(dtype), datatype, endian)
    assert check_nifti_payload(whole) is None
    bad = _nifti(tmp_path / f"bad-{name}", _floats(dtype, [(0, np.nan), (17, np.inf), (59, -np.inf)]), datatype,
                 endian)
    assert _refusal(check_nifti_payload, bad) == f"{bad}: 3 voxel(s) are NaN or infinite"


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
@pytest.mark.parametrize("dtype, datatype", [(np.float32, 16), (np.int16, 4)])
def test_voxel_data_cut_short_is_truncated_by_the_bytes_missing(tmp_path, name, dtype, datatype):
    data = _floats().astype(dtype)
    path = _nifti(tmp_path / name, data[:-1], datatype, dims=data.shape[::-1])  # one 20-voxel slice missing
    assert _refusal(check_nifti_payload, path) == \
        f"{path}: the file is truncated ({20 * data.dtype.itemsize} bytes of voxel data missing)"


def test_one_byte_missing_is_truncated(tmp_path):
    data = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    path = _nifti(tmp_path / "bytes.nii", data, 2)
    path.write_bytes(path.read_bytes()[:-1])
    assert _refusal(check_nifti_payload, path) == f"{path}: the file is truncated (1 bytes of voxel data missing)"


def test_float_voxels_are_checked_in_bounded_memory(tmp_path):
    """64 MiB of float32 are streamed 16 MiB at a time: the peak (the read, its join with the carried bytes,
    the finiteness mask) is 32 MiB on Python 3.11, under 48; reading 32 MiB at a time or the whole file
    would pass it."""
    import tracemalloc

    path = _nifti(tmp_path / "big.nii", np.ones((64, 512, 512), np.float32), 16)
    tracemalloc.start()
    try:
        assert check_nifti_payload(path) is None
        peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()
    assert peak < 48, f"{peak:.0f} MiB"


def test_the_header_extension_is_skipped_to_the_voxel_offset(tmp_path):
    """vox_offset 400: the 52 bytes after the header (NaN patterns here) are not voxels."""
    path = _nifti(tmp_path / "ext.nii", _floats(bad=[(0, np.nan)]), 16, vox_offset=400, extension=b"\xff" * 52)
    assert _refusal(check_nifti_payload, path) == f"{path}: 1 voxel(s) are NaN or infinite"
    small = _nifti(tmp_path / "small-offset.nii", _floats(bad=[(59, np.inf)]), 16, vox_offset=0)  # read from 348
    assert _refusal(check_nifti_payload, small) == f"{small}: 1 voxel(s) are NaN or infinite"


def test_only_the_dimensions_the_header_counts_are_voxels_and_an_empty_one_counts_once(tmp_path):
    data = _floats()
    # dim[0] = 3: the unused dims hold 7, which must not multiply the count (the file would look truncated)
    assert check_nifti_payload(_nifti(tmp_path / "three.nii", data, 16)) is None
    # a 4th dim of 0 counts as 1 (dim[0] = 4): the 60 voxels, no more
    assert check_nifti_payload(_nifti(tmp_path / "zero.nii", data, 16, dims=(5, 4, 3, 0))) is None
    short = _nifti(tmp_path / "four.nii", data, 16, dims=(5, 4, 3, 2))  # 2 frames declared, 1 stored
    assert _refusal(check_nifti_payload, short) == f"{short}: the file is truncated (240 bytes of voxel data missing)"


def test_voxels_are_counted_by_datatype_as_itk_reads_them_not_by_a_corrupt_bitpix(tmp_path):
    """ITK reads by the datatype code: a bitpix that contradicts it (negative, or 16 for float32) must not
    let NaN voxels (which ITK would read as 0) or a cut file through."""
    def with_bitpix(path: Path, bitpix: int) -> Path:
        data = bytearray(path.read_bytes())
        struct.pack_into("<h", data, 72, bitpix)
        path.write_bytes(bytes(data))
        return path

    nan = with_bitpix(_nifti(tmp_path / "nan.nii", _floats(bad=[(40, np.nan)]), 16), -32)
    assert _refusal(check_nifti_payload, nan) == f"{nan}: 1 voxel(s) are NaN or infinite"
    data = _floats()
    cut = with_bitpix(_nifti(tmp_path / "cut.nii", data[:-1], 16, dims=data.shape[::-1]), 16)
    assert _refusal(check_nifti_payload, cut) == f"{cut}: the file is truncated (80 bytes of voxel data missing)"
    # a negative dim: ITK reads one slice there, and so many voxels are counted
    assert check_nifti_payload(_nifti(tmp_path / "negative.nii", data, 16, dims=(5, 4, -3))) is None


def test_a_datatype_code_nifti_does_not_define_is_counted_by_bitpix_and_refused_in_one_line(tmp_path):
    data = _floats().astype(np.int16)
    cut = _nifti(tmp_path / "cut.nii", data[:-1], 9999, dims=data.shape[::-1])   # bitpix 16
    assert _refusal(check_nifti_payload, cut) == f"{cut}: the file is truncated (40 bytes of voxel data missing)"
    whole = _nifti(tmp_path / "whole.nii", data, 9999)
    assert check_nifti_payload(whole) is None
    assert _refusal(read_volume, whole).startswith(f"{whole}: cannot read this image (")   # ITK's refusal


def test_float_data_over_one_read_is_counted_across_reads(tmp_path):
    """17 MiB of float64 (two 16 MiB reads): a NaN at the first voxel, at the read boundary and at the last."""
    data = np.zeros((17, 256, 512), np.float64)
    boundary = (1 << 24) // 8
    for index in (0, boundary - 1, boundary, data.size - 1):
        data.flat[index] = np.nan
    path = _nifti(tmp_path / "big.nii", data, 64)
    assert _refusal(check_nifti_payload, path) == f"{path}: 4 voxel(s) are NaN or infinite"


def test_what_is_not_a_nifti1_header_is_left_to_itk(tmp_path):
    (tmp_path / "short.nii").write_bytes(struct.pack("<i", 348) + b"\0" * 100)   # shorter than a header
    header = bytearray(_nifti(tmp_path / "n2.nii", _floats(bad=[(0, np.nan)]), 16).read_bytes())
    header[0:4] = struct.pack("<i", 540)                                       # NIfTI-2's header size
    (tmp_path / "n2.nii").write_bytes(bytes(header))
    for name in ("short.nii", "n2.nii"):
        assert check_nifti_payload(tmp_path / name) is None


def test_a_corrupt_or_cut_compressed_file_cannot_be_read(tmp_path):
    whole = _nifti(tmp_path / "whole.nii.gz", _floats(), 16).read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    assert _refusal(check_nifti_payload, cut) == (
        f"{cut}: cannot read this image (corrupt or truncated: Compressed file ended before the end-of-stream "
        "marker was reached)")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(whole[:10] + bytes(range(256)) * 4)
    assert _refusal(check_nifti_payload, junk).startswith(f"{junk}: cannot read this image (corrupt or truncated: ")


def test_a_whole_integer_file_is_judged_by_its_size_without_reading_its_voxels(tmp_path):
    """Integer voxels have no NaN: a file as long as its header says (plain) or whose gzip trailer gives the
    right length is accepted unread (fast on a large CT); ITK reads the data and refuses what is corrupt."""
    data = np.random.default_rng(0).integers(-1000, 1000, size=(32, 64, 64)).astype(np.int16)
    plain = _nifti(tmp_path / "int.nii", data, 4)
    assert check_nifti_payload(plain) is None
    packed = bytearray(_nifti(tmp_path / "int.nii.gz", data, 4).read_bytes())
    for offset in range(len(packed) - 2000, len(packed) - 1000):  # the deflate data's end scrambled, the trailer intact
        packed[offset] ^= 0x5A
    (tmp_path / "int.nii.gz").write_bytes(bytes(packed))
    assert check_nifti_payload(tmp_path / "int.nii.gz") is None


def test_integer_payload_complete_from_the_size_or_the_gzip_trailer(tmp_path):
    plain = tmp_path / "x.nii"
    plain.write_bytes(b"\0" * 500)
    assert _integer_payload_complete(plain, 500) and _integer_payload_complete(plain, 499)
    assert not _integer_payload_complete(plain, 501)
    packed = tmp_path / "x.nii.gz"
    packed.write_bytes(gzip.compress(b"\1" * 1000))
    assert _integer_payload_complete(packed, 1000) and _integer_payload_complete(packed, 1000 + 2 ** 32)
    assert not _integer_payload_complete(packed, 999) and not _integer_payload_complete(packed, 1001)
    # ISIZE is unsigned: a 3 GiB payload's trailer reads 3 GiB, not a negative number
    packed.write_bytes(b"\0" * 20 + struct.pack("<I", 3 << 30))
    assert _integer_payload_complete(packed, 3 << 30)
    # a gzip member is at least 18 bytes (10 of header, 8 of trailer): a shorter file is never whole
    for size, whole in ((17, False), (18, True)):
        packed.write_bytes(b"\0" * (size - 4) + struct.pack("<I", 1000))
        assert _integer_payload_complete(packed, 1000) is whole, size


# ---- _check_declared_size, check_extent, check_voxels ---------------------------------------------------
def test_a_declared_size_over_the_limit_is_refused_before_reading():
    path = Path("huge.nrrd")
    _check_declared_size(path, (1 << 16, 1 << 16, 1), 1)             # exactly the limit: read
    _check_declared_size(path, (1 << 16, 1 << 16, 1), 0)             # no components reported: counted as 1
    message = (f"{path}: declares 65536 x 65536 x 1 voxels, more than dinseg reads ({MAX_INPUT_VOXELS} at most): "
               "a corrupt header?")
    assert _refusal(_check_declared_size, path, (1 << 16, 1 << 16, 1), 2) == message   # x 2 components
    assert _refusal(_check_declared_size, path, (1 << 16, (1 << 16) + 1, 1), 1) == message.replace(
        "65536 x 65536", "65536 x 65537")
    # counted without integer overflow: 2^32 x 2^32 is 2^64, which 64-bit integers wrap to 0 (accepted)
    assert "declares 4294967296 x 4294967296 x 1 voxels" in _refusal(_check_declared_size, path,
                                                                     (1 << 32, 1 << 32, 1), 1)


def test_a_huge_header_is_refused_by_read_volume(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkUInt8), str(tmp_path / "small.nrrd"))
    text = (tmp_path / "small.nrrd").read_bytes().replace(b"sizes: 4 4 4", b"sizes: 100000 100000 5000")
    (tmp_path / "huge.nrrd").write_bytes(text)
    assert _refusal(read_volume, tmp_path / "huge.nrrd") == (
        f"{tmp_path / 'huge.nrrd'}: declares 100000 x 100000 x 5000 voxels, more than dinseg reads "
        f"({MAX_INPUT_VOXELS} at most): a corrupt header?")


def _geometry(size, spacing) -> Geometry:
    return Geometry(size=size, spacing=spacing, origin=(0.0, 0.0, 0.0))


def test_spacing_must_be_positive_and_the_extent_that_of_a_body():
    check_extent(_geometry((10, 1000, 10), (1.0, 3.0, 1.0)), "x")                  # 3000 mm: accepted
    for spacing in ((1.0, 0.0, 1.0), (1.0, 1.0, -2.0)):
        assert _refusal(check_extent, _geometry((10, 10, 10), spacing), "x") == (
            f"x: voxel spacing {spacing} mm is not positive: a corrupt header?")
    assert _refusal(check_extent, _geometry((10, 1001, 12), (0.5, 3.0, 1.25)), "x") == (
        "x: spans 3003 mm (10 x 1001 x 12 voxels of 0.5 x 3 x 1.25 mm), more than any body: a corrupt spacing?")
    assert MAX_EXTENT_MM == 3000.0


def test_voxels_must_be_some_finite_and_not_all_the_same():
    assert _refusal(check_voxels, np.zeros((0, 4, 4), np.int16), "x") == "x: the image is empty (0 voxels)"
    bad = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    bad.flat[[3, 7, 59]] = (np.nan, np.inf, -np.inf)
    assert _refusal(check_voxels, bad, "x") == "x: 3 voxel(s) are NaN or infinite"
    assert _refusal(check_voxels, np.full((2, 3, 4), 7, np.int16), "x") == "x: the image is constant (every voxel is 7)"
    assert _refusal(check_voxels, np.full((2, 3, 4), 1.5, np.float32), "x") == \
        "x: the image is constant (every voxel is 1.5)"
    assert _refusal(check_voxels, np.full((1, 1, 1), 5, np.uint8), "x") == "x: the image is constant (every voxel is 5)"
    check_voxels(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "x")
    check_voxels(np.arange(24, dtype=np.float64).reshape(2, 3, 4), "x")


# ---- read_volume -----------------------------------------------------------------------------------------
def _write(path: Path, image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _ramp(size=(5, 4, 3), spacing=(0.5, 0.75, 2.0), pixel=sitk.sitkInt16):
    image = sitk.GetImageFromArray(np.arange(int(np.prod(size))).reshape(size[::-1]).astype(np.int16))
    image = sitk.Cast(image, pixel)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 30.0))
    return image


def test_a_3d_image_is_read_with_its_geometry(tmp_path):
    volume = read_volume(_write(tmp_path / "ct.nii.gz", _ramp()))
    assert volume.array.shape == (3, 4, 5) and volume.array.flags.writeable
    assert np.array_equal(volume.array.ravel(), np.arange(60))
    assert volume.geometry == Geometry(size=(5, 4, 3), spacing=(0.5, 0.75, 2.0), origin=(10.0, -20.0, 30.0))
    assert (volume.frame_spacing, volume.modality, volume.source_files) == (None, None, ())


def test_a_4d_image_is_a_time_series_with_its_frame_spacing(tmp_path):
    frames = [_ramp() for _ in range(3)]
    series = sitk.JoinSeries(frames, 0.0, 40.0)
    volume = read_volume(_write(tmp_path / "cine.nrrd", series))
    assert volume.array.shape == (3, 3, 4, 5) and volume.frame_spacing == 40.0
    assert volume.geometry.size == (5, 4, 3) and volume.geometry.spacing == (0.5, 0.75, 2.0)


def test_a_multiframe_cine_dicom_is_frames_of_one_slice():
    volume = read_volume(CINE_DICOM)
    assert volume.array.shape == (16, 1, 256, 256)
    assert volume.geometry == Geometry(size=(256, 256, 1), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    assert volume.frame_spacing == pytest.approx(69.47)
    assert (volume.modality, volume.source_files) == ("MR", (str(CINE_DICOM),))


def test_a_cine_keeps_its_width_height_and_orientation(tmp_path):
    """The cine cut to 128 columns and turned (rows along y, columns along -z): size (x, y, 1) in that order,
    the direction and origin of its header."""
    pydicom = pytest.importorskip("pydicom")
    dataset = pydicom.dcmread(CINE_DICOM)
    dataset.PixelData = np.ascontiguousarray(dataset.pixel_array[:, :, :128]).tobytes()
    dataset.Columns = 128
    dataset.ImageOrientationPatient, dataset.ImagePositionPatient = [0, 1, 0, 0, 0, -1], [5, -6, 7]
    dataset.save_as(tmp_path / "turned.dcm")
    volume = read_volume(tmp_path / "turned.dcm")
    assert volume.array.shape == (16, 1, 256, 128)
    assert volume.geometry == Geometry(size=(128, 256, 1), spacing=(1.0, 1.0, 1.0), origin=(5.0, -6.0, 7.0),
                                       direction=(0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))


def test_what_read_volume_refuses_in_one_line(tmp_path):
    missing = tmp_path / "missing.nii.gz"
    assert _refusal(read_volume, missing) == f"{missing}: no such file or folder"
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    assert _refusal(read_volume, empty) == f"{empty}: the file is empty (0 bytes)"
    flat = _write(tmp_path / "flat.nrrd", sitk.Image([8, 8], sitk.sitkInt16) + 1)
    assert _refusal(read_volume, flat) == f"{flat}: is a 2D image; a 3D volume or a 4D time series is needed"
    five = _write(tmp_path / "five.nrrd", sitk.Image([2, 2, 2, 2, 2], sitk.sitkInt16))
    assert _refusal(read_volume, five) == f"{five}: has 5 dimensions; 3D or 4D is supported"
    rgb = _write(tmp_path / "rgb.nrrd", sitk.Compose([_ramp(pixel=sitk.sitkUInt8)] * 3))
    assert _refusal(read_volume, rgb) == (f"{rgb}: has 3 components per voxel (colour or vector image); a scalar "
                                          "medical image is needed")
    constant = _write(tmp_path / "constant.mha", sitk.Image([4, 4, 4], sitk.sitkInt16))
    assert _refusal(read_volume, constant) == f"{constant}: the image is constant (every voxel is 0)"
    wide = _ramp(spacing=(900.0, 1.0, 1.0))
    wide = _write(tmp_path / "wide.nrrd", wide)
    assert _refusal(read_volume, wide) == (f"{wide}: spans 4500 mm (5 x 4 x 3 voxels of 900 x 1 x 1 mm), more than "
                                           "any body: a corrupt spacing?")
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"not an image at all\n" * 10)
    reason = _refusal(read_volume, junk)
    assert reason.startswith(f"{junk}: cannot read this image (") and reason.endswith(")") and "\n" not in reason
    assert "Exception thrown in SimpleITK ImageFileReader" in reason, reason  # ITK's own words, one line of them


@pytest.mark.parametrize("name", ["cut.nii", "CUT.NII", "cut.nii.gz"])
def test_a_cut_nifti_is_refused_where_itk_would_fill_it_with_zeros(tmp_path, name):
    whole = _write(tmp_path / "whole.nii", _ramp(size=(20, 20, 4)))
    data = whole.read_bytes()[:-100]
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert _refusal(read_volume, path) == f"{path}: the file is truncated (100 bytes of voxel data missing)"


def test_nan_voxels_in_a_float_nifti_are_refused_by_read_volume(tmp_path):
    path = _nifti(tmp_path / "nan.nii", _floats(bad=[(5, np.nan)]), 16)
    assert _refusal(read_volume, path) == f"{path}: 1 voxel(s) are NaN or infinite"


def test_a_reading_librarys_reason_is_said_in_the_users_words():
    from dinseg.core.errors import in_plain_words

    assert in_plain_words("ct.nii.gz: cannot read this image (Not a gzipped file (b'Th'))") == \
        "ct.nii.gz: cannot read this image: the file is cut short or damaged"
    assert in_plain_words("ct.nii.gz: cannot read this image (corrupt or truncated: Compressed file ended before "
                          "the end-of-stream marker was reached)").endswith(": the file is cut short or damaged")
    assert in_plain_words("x.png: cannot read this image (Could not create IO object for reading file x.png)") == \
        "x.png: cannot read this image: not an image format dinseg reads (NIfTI, NRRD, MHA, zipped DICOM)"
    for unchanged in ("x.nrrd: is a 2D image; a 3D volume is needed", "a (bracketed) middle", "ends (in words)"):
        assert in_plain_words(unchanged) == unchanged
