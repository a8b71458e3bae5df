"""Where the NIH ChestX-ray14 release lives: its 12 image archives, its metadata files and what is known about them.

Source: NIH Clinical Center, "NIH Chest X-ray Dataset", https://nihcc.app.box.com/v/ChestXray-NIHCC (the release
folder; its ``batch_download_zips.py`` lists the archive addresses below), described in Wang et al., "ChestX-ray8:
Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common
Thorax Diseases", IEEE CVPR 2017, pp. 3462-3471. The release asks users to link to that page, cite the paper and
acknowledge the NIH Clinical Center as the data provider. Used by ``cxrmtl.data.download`` (docs/download.md).
"""

from __future__ import annotations

from cxrmtl import labels

# The public page of the release (the folder that holds every file below, browsable by hand).
RELEASE_PAGE: str = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
CITATION: str = (
    "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray Database and "
    "Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases. IEEE CVPR 2017, "
    "pp. 3462-3471. Data: NIH Clinical Center, " + RELEASE_PAGE
)

# Direct ("shared static") addresses of the 12 image archives, in order images_001.tar.gz .. images_012.tar.gz, as
# the release's batch_download_zips.py lists them. Box answers each with a redirect to its download host.
ARCHIVE_BASE_URL: str = "https://nihcc.box.com/shared/static/"
ARCHIVE_IDS: tuple[str, ...] = (
    "vfk49d74nhbxq3nqjg0900w5nvkorp5c",
    "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1",
    "f1t00wrtdk94satdfb9olcolqx20z2jp",
    "0aowwzs5lhjrceb3qp67ahp0rd1l1etg",
    "v5e3goj22zr6h8tzualxfsqlqaygfbsn",
    "asi7ikud9jwnkrnkj99jnpfkjdes7l6l",
    "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n",
    "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j",
    "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj",
    "l6nilvfa9cg3s28tqv1qc1olm3gnz54p",
    "hhq8fkdgvcari67vfhs7ppg2w6ni4jze",
    "ioqwiy20ihqwyr8pf4c24eazhh281pbu",
)
ARCHIVE_NAMES: tuple[str, ...] = tuple(f"images_{i:03d}.tar.gz" for i in range(1, labels.NIH_ARCHIVES + 1))
ARCHIVE_URLS: dict[str, str] = {
    name: f"{ARCHIVE_BASE_URL}{box_id}.gz" for name, box_id in zip(ARCHIVE_NAMES, ARCHIVE_IDS, strict=True)
}
# Images per archive (Kaggle's data card for the mirror: 4,999 in the first, 10,000 in the next ten, the
# remaining 7,121 in the last; together the 112,120 images).
ARCHIVE_IMAGES: dict[str, int] = {
    name: 4_999 if i == 0 else 10_000 if i < 11 else labels.NIH_NUM_IMAGES - 4_999 - 10 * 10_000
    for i, name in enumerate(ARCHIVE_NAMES)
}
# Size guesses for the free-disk check when the server does not say (no Content-Length): the release is about
# 45 GB of archives holding about 45 GB of PNGs (gzip gains almost nothing on PNG), i.e. about 400 kB per image.
APPROX_BYTES_PER_IMAGE: int = 45 * 10**9 // labels.NIH_NUM_IMAGES
APPROX_ARCHIVE_BYTES: dict[str, int] = {name: n * APPROX_BYTES_PER_IMAGE for name, n in ARCHIVE_IMAGES.items()}
# Extracted size / archive size used when estimating the space extraction needs (PNG does not compress further).
EXTRACT_RATIO: float = 1.0

# Metadata files of the release, in the folder next to images/. The release serves them only through its web page:
# no direct address for them is known to us, so they come from a --mirror, a Kaggle copy or a download by hand.
METADATA_NAMES: tuple[str, ...] = (
    "Data_Entry_2017_v2020.csv",
    "BBox_List_2017.csv",
    labels.TRAIN_VAL_LIST,
    labels.TEST_LIST,
)
# md5 of the official split lists as distributed by the NIH release (train_val_list.txt, test_list.txt): a mismatch
# means another split than the paper's.
SPLIT_LIST_MD5: dict[str, str] = {
    labels.TRAIN_VAL_LIST: "067e3a84206964892e6300e4a4c0a205",
    labels.TEST_LIST: "adeeabf20ea2a8eb66ced87b78434400",
}
# Approximate metadata sizes for the disk check (Data_Entry v2020 is about 8 MB; the rest is small).
APPROX_METADATA_BYTES: int = 12 * 10**6

# The Kaggle mirror (nih-chest-xrays/data): the same images as images_001/images/*.png .. images_012/images/*.png
# next to Data_Entry_2017.csv, BBox_List_2017.csv and the two split lists.
KAGGLE_DATASET: str = "https://www.kaggle.com/datasets/nih-chest-xrays/data"
KAGGLE_IMAGE_DIRS: tuple[str, ...] = tuple(f"images_{i:03d}" for i in range(1, labels.NIH_ARCHIVES + 1))
