"""A miniature NED, NEST and BERG: the publishers' exact files, with synthetic values.

The demo, the converters' examples, the tests and the benchmarks use these writers; users can
too, to try a pipeline without the 0.4 TB.  The files look exactly like the ones the
publishers distributed (see ``shared/spec/nest-formats.md``): per entry, one contiguous,
uncompressed float32 HDF5 dataset ``synthetic_neural_responses`` and a pickled ``.npy``
metadata dict (:mod:`~nest_data.synthetic.ned`); fwRF weights as NEST's ``.pt`` training
checkpoints (:mod:`~nest_data.synthetic.fwrf`); EEG and fsaverage weights as BERG's ``.npy``
dicts and ViT-B/32 as torchvision's ``.pth`` (:mod:`~nest_data.synthetic.vit`); input images
(:mod:`~nest_data.synthetic.images`).  Values are deterministic functions of ``seed`` and have
structure (:mod:`~nest_data.synthetic.responses`).  **The numbers are synthetic**; only the
formats are the publishers'.

Examples
--------
>>> import tempfile
>>> from nest_data.synthetic import write_ned
>>> ned = write_ned(tempfile.mkdtemp(), modalities=["eeg"], subjects=[1],
...                 imagesets=["things"], n_images=4, show_progress=False)
>>> ned.name
'pregenerated_insilico_neural_responses'
"""

from nest_data.synthetic.fwrf import (
    FWRF_METADATA_LAYOUTS,
    FWRF_TRUNK,
    SPLIT_ROIS,
    fwrf_metadata_path,
    fwrf_state_dicts,
    fwrf_weight_paths,
    write_fwrf_weights,
)
from nest_data.synthetic.images import test_images, write_image_folder, write_image_zarr
from nest_data.synthetic.ned import NAME_SCHEMES, NED_ROOT_NAMES, ned_file_paths, write_ned
from nest_data.synthetic.responses import (
    CHANNELS,
    ROI_VOXELS_SUB01,
    TIMES,
    VOLUME_SHAPES,
    roi_voxel_count,
)
from nest_data.synthetic.vit import (
    FSAVERAGE_ROI_LAYOUT,
    VIT_B_32_FILE,
    eeg_head_arrays,
    eeg_metadata_path,
    eeg_weight_paths,
    fsaverage_arrays,
    fsaverage_paths,
    vit_b_32_state_dict,
    write_eeg_weights,
    write_fsaverage_weights,
    write_vit_b_32,
)

__all__ = [
    "CHANNELS",
    "FSAVERAGE_ROI_LAYOUT",
    "FWRF_METADATA_LAYOUTS",
    "FWRF_TRUNK",
    "NAME_SCHEMES",
    "NED_ROOT_NAMES",
    "ROI_VOXELS_SUB01",
    "SPLIT_ROIS",
    "TIMES",
    "VIT_B_32_FILE",
    "VOLUME_SHAPES",
    "eeg_head_arrays",
    "eeg_metadata_path",
    "eeg_weight_paths",
    "fsaverage_arrays",
    "fsaverage_paths",
    "fwrf_metadata_path",
    "fwrf_state_dicts",
    "fwrf_weight_paths",
    "ned_file_paths",
    "roi_voxel_count",
    "test_images",
    "vit_b_32_state_dict",
    "write_eeg_weights",
    "write_fsaverage_weights",
    "write_fwrf_weights",
    "write_image_folder",
    "write_image_zarr",
    "write_ned",
    "write_vit_b_32",
]
