"""The catalogue of validation rules (:data:`ketamine_pmx.data.RULES`) against the tests.

Every rule is broken at least once: by a case of ``malformed_cases`` (run in the module of its
rule family), by an unreadable file (``test_validation_io``) or, for the rules that only warn,
by a test of its own.
"""

from __future__ import annotations

from malformed_cases import CASES

from ketamine_pmx.data import RULES

#: Rules that only warn, each with its own test (test_columns, test_relational,
#: test_nonmem_records).
WARNING_RULES = {"column-case", "column-ignored", "conc-before-dose", "observation-replicate"}


def test_every_rule_has_a_malformed_case():
    covered = {c.rule for c in CASES} | {"file-readable"} | WARNING_RULES
    assert covered == set(RULES), sorted(set(RULES) ^ covered)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
