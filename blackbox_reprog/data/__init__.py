"""Target tasks: built-in UCR/UEA series and digit images, or .npz, .ts, .csv, .tsv and .txt
files and image folders.

``load`` gives (train, test) with labels mapped to 0..K-1; ``make_splits`` adds seeded stratified
splits, and resamples series to one length on request (``resample``). Every problem with a
source is a ``DataError`` whose message is one sentence.

Modules, each with one job: ``dataset`` (the types), ``loading`` (names and paths to
datasets), ``builtin`` (the datasets found in installed packages), ``formats`` (a file's
reader by its suffix), ``tables`` (.csv, .tsv, .txt), ``ts`` (.ts), ``arrays`` (.npz),
``images`` (image folders, IDX files), ``encoding`` (labels to class indices), ``splits``,
``series`` (resampling) and ``safety`` (checks against hostile files).
"""
from .arrays import MIN_IMAGE_SIDE, NPZ_LAYOUTS, npz_member, usual_shape
from .builtin import FASHION_MNIST, builtin_names
from .dataset import DataError, Dataset, Raw, RawPair, Splits
from .encoding import canonical_labels
from .images import GRAY_MODES, IMAGE_SUFFIXES, class_folder_images
from .loading import load
from .safety import MAX_IMAGE_PIXELS, check_npy_size, check_npz_sizes, open_image, regular_file
from .series import resample
from .splits import make_splits
from .tables import TEXT_SUFFIXES, Table, read_table

__all__ = ["DataError", "Dataset", "FASHION_MNIST", "GRAY_MODES", "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS",
           "MIN_IMAGE_SIDE", "NPZ_LAYOUTS", "Raw", "RawPair", "Splits", "TEXT_SUFFIXES", "Table",
           "builtin_names", "canonical_labels", "check_npy_size", "check_npz_sizes", "class_folder_images",
           "load", "make_splits", "npz_member", "open_image", "read_table", "regular_file", "resample",
           "usual_shape"]
