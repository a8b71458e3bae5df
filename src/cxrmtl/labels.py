"""Domain constants: one source of truth for label order, task names, codes and normalisation.

Everything that names a finding, a view or a sex code imports it from here. Every number cites its source.
"""

from __future__ import annotations

# The 14 ChestX-ray14 findings in the canonical order used by Wang et al. 2017 (arXiv:1705.02315) and CheXNet.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_FINDINGS: int = len(FINDINGS)
FINDING_INDEX: dict[str, int] = {name: i for i, name in enumerate(FINDINGS)}
NO_FINDING: str = "No Finding"

# BBox_List_2017.csv covers 8 findings and spells one of them differently ("Infiltrate").
BBOX_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}

# Categorical metadata codes. -1 everywhere means "missing" (the sample is masked out for that task).
SEX_CODES: dict[str, int] = {"M": 0, "F": 1}
VIEW_CODES: dict[str, int] = {"PA": 0, "AP": 1}
MISSING_CODE: int = -1

# Official NIH release facts (NIH ChestX-ray14 release: Data_Entry_2017, train_val_list.txt, test_list.txt).
NIH_NUM_IMAGES: int = 112_120
NIH_NUM_PATIENTS: int = 30_805
NIH_IMAGE_SIZE: int = 1024
NIH_SPLIT_COUNTS: dict[str, tuple[int, int]] = {"train_val": (86_524, 28_008), "test": (25_596, 2_797)}
NIH_ARCHIVES: int = 12

# File names of the NIH release.
DATA_ENTRY_NAMES: tuple[str, ...] = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
BBOX_NAMES: tuple[str, ...] = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")
TRAIN_VAL_LIST: str = "train_val_list.txt"
TEST_LIST: str = "test_list.txt"
GOOGLE_LABELS_NAME: str = "google2019_nih-chest-xray-labels.csv.gz"

# Splits. "val" is carved out of train_val by patient (default fraction below, seeded).
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_VAL_FRACTION: float = 0.10
DEFAULT_SPLIT_SEED: int = 0

# Task names produced by the index and consumed by tasks/ (see docs/architecture.md).
TARGET_NAMES: tuple[str, ...] = ("findings", "abnormal", "age", "sex", "view")

# Pixel normalisation applied on the device to uint8 images: x = (u8 / 255 - MEAN) / STD.
# Gray mean/std of NIH images measured on a sample of 225 real NIH PNGs (ImageNet's gray
# equivalent is close: 0.449 / 0.226).
PIXEL_MEAN: float = 0.50
PIXEL_STD: float = 0.25

# Urgency order for triage, most urgent first (Baltruschat et al., Eur Radiol 2021: pneumothorax, effusion,
# infiltrate, congestion (~Edema), atelectasis, cardiomegaly, mass); the rest follow by clinical acuity.
URGENCY_ORDER: tuple[str, ...] = (
    "Pneumothorax",
    "Effusion",
    "Infiltration",
    "Edema",
    "Atelectasis",
    "Cardiomegaly",
    "Mass",
    "Pneumonia",
    "Consolidation",
    "Nodule",
    "Hernia",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
)

# --- Triage (triage/urgency.py, triage/simulate.py; resources/configs/triage_default.yaml mirrors these) ----------
# Default urgency weight per finding, in [0, 1], non-increasing along URGENCY_ORDER (a test keeps it so).
# Tiers follow Annarumma et al., Radiology 2019 (critical / urgent / non-urgent / normal priority classes):
# pneumothorax is their critical finding that ChestX-ray14 labels; effusion, consolidation/pneumonia, oedema and
# masses are urgent; nodules, hernia, emphysema, fibrosis and pleural thickening are non-urgent. Within the urgent
# tier the order is Baltruschat et al., Eur Radiol 2021 (pneumothorax, effusion, infiltrate, congestion (~Edema),
# atelectasis, cardiomegaly, mass). The spacing of the numbers is our choice; only the order and the tiers are sourced.
URGENCY_WEIGHTS: dict[str, float] = {
    "Pneumothorax": 1.00,
    "Effusion": 0.90,
    "Infiltration": 0.80,
    "Edema": 0.75,
    "Atelectasis": 0.70,
    "Cardiomegaly": 0.60,
    "Mass": 0.55,
    "Pneumonia": 0.50,
    "Consolidation": 0.50,
    "Nodule": 0.30,
    "Hernia": 0.25,
    "Emphysema": 0.20,
    "Fibrosis": 0.15,
    "Pleural_Thickening": 0.10,
}
# Findings that make a study "critical" (Annarumma et al. 2019's critical class, restricted to ChestX-ray14 labels).
URGENCY_CRITICAL: tuple[str, ...] = ("Pneumothorax",)
# A positive finding with at least this weight makes a study "urgent" (the Annarumma urgent tier above).
URGENCY_URGENT_WEIGHT: float = 0.50
# Without operating thresholds (run not evaluated on val) a finding counts when its probability reaches this.
URGENCY_FALLBACK_THRESHOLD: float = 0.50
# Which of the run's val operating points (eval.thresholds.THRESHOLD_METHODS) calls findings positive for triage: the
# one at EVAL_TARGET_SENSITIVITY (0.90). A critical finding the model misses sinks to the end of the worklist
# (Baltruschat et al. 2021's false-negative problem), so triage runs where computer-aided triage devices run: at high
# sensitivity. On the demo phantom Youden's point found 10 of 25 test pneumothoraces, this one 23 (docs/triage.md).
URGENCY_THRESHOLD_METHOD: str = "sensitivity"
URGENCY_LEVELS: tuple[str, ...] = ("routine", "urgent", "critical")  # ascending; index = tier of the score
# Goal of the reading-room simulation (issue 9), from Baltruschat et al. 2021's pneumothorax result with an upper
# limit (mean 35.6 / 80.1 min = 0.44 of FIFO; maximum about 1.1 of FIFO): critical findings' mean time to report at
# most this share of FIFO's, their maximum at most this multiple of FIFO's.
TRIAGE_GOAL_MEAN_RATIO: float = 0.45
TRIAGE_GOAL_MAX_RATIO: float = 1.10
# Default reading room of `cxrmtl triage simulate` (docs/triage.md explains the choice; all are assumptions, not
# measurements): one reader on the chest X-ray worklist, 36 studies an hour for 24 h (~860 a day, a large hospital's
# volume), lognormal read times with mean 1.5 min (chest X-rays are read in one to two minutes). Offered utilisation
# 36 x 1.5 / 60 = 0.90: loaded enough that the order matters (below ~0.8 queues stay short), stable within a day
# (near 1 the queue grows all day). The upper limit is "auto": FIFO's longest wait in the same room (simulate.py).
TRIAGE_SIM_ARRIVALS_PER_HOUR: float = 36.0
TRIAGE_SIM_READERS: int = 1
TRIAGE_SIM_READ_MINUTES: float = 1.5
TRIAGE_SIM_READ_TIME: str = "lognormal"
TRIAGE_SIM_HOURS: float = 24.0
TRIAGE_SIM_UPPER_LIMIT: float | str = "auto"
# The live service's upper limit on waiting (minutes) before a study goes to the top of the worklist (Baltruschat
# et al., Eur Radiol 2021: an upper limit repairs the longer maximum wait of urgency order). The simulation's "auto"
# needs a simulated FIFO room; a live worklist takes a fixed limit, overridable with `cxrmtl serve
# --upper-limit-minutes`.
SERVE_UPPER_LIMIT_MINUTES: float = 60.0
TRIAGE_SIM_SEEDS: int = 20
# --- end triage ---------------------------------------------------------------------------------------------------

# Image reader limits (decompression-bomb guard): largest side and total pixels accepted.
MAX_IMAGE_SIDE: int = 16_384
MAX_IMAGE_PIXELS: int = 100_000_000
MAX_IMAGE_BYTES: int = 512 * 1024 * 1024

# --- Localisation and ablation (localize/localization.py, ablate/ablation.py) -----------------------------------------
# Wang et al. 2017 (ChestX-ray8, arXiv:1705.02315, Sec. 4 "B-Box generation"): the heatmap is normalised to
# [0, 255] and binarised at 60 and at 180 separately; every connected region of either binary map becomes a box.
LOC_HEATMAP_THRESHOLDS: tuple[int, ...] = (60, 180)
# Heatmap -> boxes rules `cxrmtl localize --box-rule` offers (localize.localization.BOX_RULES): "wang" is the rule
# above, kept for the protocol number; "peak" (the default) boxes only the strongest region. Wang's rule scattered
# 5-15 false boxes per image on the demo phantom; "peak" with one box per map stays under 1 (bench/bench_cam.py,
# docs/localization.md). Parameters chosen on the boxed train+val images of three demo-phantom runs, never on test.
LOC_BOX_RULES: tuple[str, ...] = ("peak", "wang")
LOC_DEFAULT_BOX_RULE: str = "peak"
LOC_PEAK_SIGMA: float = 0.0  # Gaussian smoothing, a fraction of the map's side (0.02-0.04 changed nothing measurable)
LOC_PEAK_LEVEL: float = 0.7  # binarise the [0, 1] map here (0.5 gave fewer hits at T(IoBB)=0.5, larger boxes)
LOC_PEAK_KEEP: float = 0.8  # keep a region whose maximum reaches this share of the map's maximum
LOC_PEAK_MAX_BOXES: int = 1  # at most this many boxes per heatmap (2-3 pushed the false boxes to 1 or more)
LOC_PEAK_MIN_AREA: float = 0.0  # drop regions smaller than this share of the map
# Overlap thresholds Wang et al. 2017 report: T(IoBB) for the 14-class model, T(IoU) for the 8-class model.
LOC_IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
LOC_IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# Wang et al. 2017 (arXiv:1705.02315), 14-class model, localisation accuracy at T(IoBB) = 0.5.
WANG_IOBB05_ACCURACY: dict[str, float] = {
    "Atelectasis": 0.194,
    "Cardiomegaly": 0.945,
    "Effusion": 0.418,
    "Infiltration": 0.650,
    "Mass": 0.306,
    "Nodule": 0.000,
    "Pneumonia": 0.483,
    "Pneumothorax": 0.265,
}
# The overlap threshold at which the gallery calls a heatmap a hit (the one Wang et al. tabulate).
LOC_GALLERY_IOBB: float = 0.5
# Class-activation-map methods `cxrmtl localize --cam` offers (localize.cam.CAM_METHODS) and the default, chosen on
# the phantom's boxes (docs/localization.md, BENCHMARKS.md).
LOC_CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam")
LOC_DEFAULT_CAM: str = "hirescam"
# Default CAM layer: the deepest backbone stage whose map has at least this many cells a side at the run's input size
# (a 4 x 4 map cannot draw a box around a finding covering 1-6 % of the image; measured on the phantom, BENCHMARKS.md).
# Wang et al. 2017 took theirs from a 32 x 32 map (ResNet-50 at 1024 px with a transition layer).
LOC_CAM_MIN_SIDE: int = 8
# ... and the map is the average of the CAMs of the this-many deepest such stages (ResNet at 128 px: layer2, 16 x 16,
# and layer3, 8 x 8). Averaged over three demo-phantom runs the pair gave the best accuracy under 1 false box and the
# best pointing rate on the boxed train+val images, though not in every run (bench/bench_cam.py, docs/localization.md).
LOC_CAM_STAGES: int = 2
LOC_CAM_TITLES: dict[str, str] = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM"}
# Ablation: seeds per variant on the phantom (issue 5: at least 3) and the weighting methods the harness compares.
ABLATION_DEFAULT_SEEDS: int = 3
ABLATION_WEIGHTINGS: tuple[str, ...] = ("equal", "uncertainty", "dwa", "gradnorm", "pcgrad")
# Data-efficiency condition (`cxrmtl ablate --rare-fraction`, data.rare_positive_fraction): the four rarest findings
# of the real release by image prevalence, from Data_Entry_2017_v2020.csv's 112,120 rows as tabulated in
# resources/phantom_stats.json ("combos", made by scripts/derive_phantom_stats.py): Hernia 227 images (0.20 %),
# Pneumonia 1,431 (1.28 %), Fibrosis 1,686 (1.50 %), Edema 2,303 (2.05 %); the next are Emphysema 2,516 (2.24 %)
# and Cardiomegaly 2,776 (2.48 %). A test recomputes the order from that file.
RARE_FINDINGS: tuple[str, ...] = ("Hernia", "Pneumonia", "Fibrosis", "Edema")
# Single-task models the ablation trains (`--single`): every chosen finding, only the rare findings whose positives
# were cut (the others' single-task models do not depend on the cut), or none.
ABLATION_SINGLE_MODES: tuple[str, ...] = ("all", "rare", "none")
# Plateau verdict of the validation curves (ablate.curves): a curve has stopped rising when the best value of its last
# third of evaluations is at most this much above the best value before it.
ABLATION_PLATEAU_TOLERANCE: float = 0.005
# --- end localisation and ablation ---------------------------------------------------------------------------------

# --- data index and image reader (data/nih.py, data/imageio.py) -------------------------------------------------
# Rows of Data_Entry that are in neither official list keep this split name: counted by `data check`, never served.
UNLISTED_SPLIT: str = "unlisted"
# Ages above this are impossible and treated as missing: the 2017 csv has typos such as 148, 155 and 411-414 years
# (NIH release; fixed in Data_Entry_2017_v2020.csv). 122 years is the oldest verified human age (Jeanne
# Calment), so 120 is safe.
MAX_PLAUSIBLE_AGE: float = 120.0
# Image folders: a flat `images/` (NIH archives) and/or `images_001/images` .. (Kaggle mirror), searched in this order.
IMAGE_DIR_NAME: str = "images"
IMAGE_SUBDIR_GLOB: str = "images_*/images"
# An image needs at least 2 pixels per side: a 1-pixel line cannot be resampled (bilinear needs two samples).
MIN_IMAGE_SIDE: int = 2
# Luma weights for colour -> gray when the channels differ (ITU-R BT.601, the weights Pillow's convert("L") uses).
LUMA_WEIGHTS_RGB: tuple[float, float, float] = (0.299, 0.587, 0.114)

# --- Preprocessing cache (data/cache.py, data/loader.py) ---------------------------------------------------------
# Allowed cache side S (images are S x S): below 8 nothing is left of a chest X-ray; 4096 is 4x NIH's 1024.
CACHE_MIN_SIZE: int = 8
CACHE_MAX_SIZE: int = 4096
# Largest number of images per journal chunk (bounds the work lost to a kill) and the fsync interval: at most this
# many seconds of decoding is redone after a crash, while fsync stays rare enough to cost < 1% of build time.
CACHE_MAX_CHUNK: int = 256
CACHE_SYNC_SECONDS: float = 1.0
# Bytes re-hashed per read by `cache verify` (64 MiB keeps memory flat for any cache size).
CACHE_VERIFY_BYTES: int = 64 * 1024 * 1024

# --- Evaluation (eval/metrics.py ... report/render.py, cxrmtl evaluate) ---------------------------------------------
# Bootstrap resamples by default: 1,000 percentile-interval draws (Efron & Tibshirani 1993, ch. 13, suggest >= 1,000
# for percentile CIs); confidence level of all intervals.
EVAL_BOOTSTRAP: int = 1000
EVAL_CI_LEVEL: float = 0.95
# Operating point with a fixed sensitivity, chosen on the validation split (a common screening target).
EVAL_TARGET_SENSITIVITY: float = 0.90
# Reliability diagrams and ECE: 15 equal-width bins as in Guo et al., "On Calibration of Modern Neural Networks",
# ICML 2017.
EVAL_ECE_BINS: int = 15
# Age bands for subgroup AUROC, [low, high) in years, with their labels.
EVAL_AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<40", 0.0, 40.0),
    ("40-59", 40.0, 60.0),
    ("60-79", 60.0, 80.0),
    (">=80", 80.0, 1000.0),
)
# Google expert labels (Majkowska et al., Radiology 2020) -> ChestX-ray14 findings whose probabilities are
# combined by max. "Airspace opacity" in that paper covers consolidation, pneumonia-like infiltrates, edema and
# collapse (atelectasis); Fracture has no ChestX-ray14 counterpart and is not evaluated.
EVAL_EXPERT_MAP: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": ("Consolidation", "Pneumonia", "Infiltration", "Atelectasis", "Edema"),
}

# --- Phantom (phantom/generate.py; owner: phantom module) -------------------------------------------------------------
# Defaults of `cxrmtl phantom`. Difficulty 0 = obvious lesions, 1 = invisible; at the default a ResNet-18 trained
# 3 epochs from scratch at 128 px reaches mean AUROC 0.85, min 0.71 (bench/results/learnability.md): far from perfect.
# Files whose presence in a data folder marks it as a synthetic phantom (written by `cxrmtl phantom` or by hand).
PHANTOM_MARKERS: tuple[str, ...] = ("phantom.json", "PHANTOM", "PHANTOM.txt", ".cxrmtl-phantom")
PHANTOM_DEFAULT_PATIENTS: int = 1_000
PHANTOM_DEFAULT_DIFFICULTY: float = 0.5
PHANTOM_DEFAULT_LABEL_NOISE: float = 0.05  # share of positive labels flipped, text-mining style (Oakden-Rayner 2020)
PHANTOM_PREVALENCE_MODES: tuple[str, ...] = ("real", "boosted")
PHANTOM_BOOSTED_MIN_PREVALENCE: float = 0.05  # "boosted" lifts every finding to at least this share of images
PHANTOM_BOX_SHARE: float = 0.2  # share of images with a boxed finding that get rows in BBox_List_2017.csv
PHANTOM_IMAGES_PER_FOLDER: int = 10_000  # Kaggle mirror: images_001..images_012 of up to 10,000 PNGs each

# --- Tasks (tasks/regression.py) ----------------------------------------------------------------------------------
# Age is regressed standardised, (years - AGE_PRIOR_YEARS) / AGE_SCALE, so its target has unit spread like the
# classification logits and its loss gradient is of the same order. Mean and sd of "Patient Age" over the 112,120 rows
# of Data_Entry_2017_v2020.csv (measured: mean 46.6, sd 16.6, median 49). A scale of 100 (years / 100) was tried
# first: the age loss was ~0.01, its gradient ~40x smaller than the other tasks', and the demo's age MAE stayed at
# 17 years (the spread of the prior).
AGE_SCALE: float = 16.6
AGE_PRIOR_YEARS: float = 46.6
