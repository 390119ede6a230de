"""The zoo's model keys and the names a reader meets in reports and logs."""
from __future__ import annotations

ZOO_NORMS = ("ln", "rms", "dyt", "none")
LN_REMOVED = "ln→lnfree"
LABELS = {
    "ln": "LayerNorm (Pre-LN)",
    "rms": "RMSNorm",
    "dyt": "DyT",
    "none": "no normalization",
    LN_REMOVED: "LayerNorm removed by fine-tuning",
}
