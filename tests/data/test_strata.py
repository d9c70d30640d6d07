"""Each subject's stratum for the stratified checks and figures: its arm, else its indication."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ketamine_pmx.data import subject_strata


def clean(arms):
    """Two rows per subject of a clean table (ID, ARM, INDICATION)."""
    ids = [1, 1, 2, 2, 3, 3]
    return pd.DataFrame(
        {
            "ID": ids,
            "ARM": [arms[i - 1] for i in ids],
            "INDICATION": ["MDD", "MDD", "CRPS", "CRPS", "CRPS", "CRPS"],
        }
    )


def test_subjects_are_stratified_by_arm():
    strata = subject_strata(clean(["MDD", "CRPS_OUT", "CRPS_IN"]))
    assert strata.to_dict() == {1: "MDD", 2: "CRPS_OUT", 3: "CRPS_IN"}


def test_without_arms_the_indication_stratifies():
    strata = subject_strata(clean([np.nan, np.nan, np.nan]))
    assert strata.to_dict() == {1: "MDD", 2: "CRPS", 3: "CRPS"}


def test_a_subject_without_an_arm_among_others_keeps_no_stratum():
    """The fallback is for datasets without arms, not for single missing ones."""
    strata = subject_strata(clean(["MDD", np.nan, "CRPS_IN"]))
    assert strata.isna().tolist() == [False, True, False]
