"""Bad-input catalogue cases of issue 23: studies (run by tests/test_bad_inputs.py).

Each case is (area, command, {file: content}, expected error lines); see tests/test_bad_inputs.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

_LONG_NAME = "x" * 300
_ALL_BITS = ",".join(str(b) for b in range(23, 0, -1))


def _precision_study_truncate_nearest(path: Path) -> None:
    """the journal and record of a precision study started with --bits 4 --rounding truncate,nearest --seeds 1"""
    import optuna

    from nnlab.orchestration import KIND_ATTR, open_storage
    from nnlab.study import StudySpec
    from nnlab.study._plan import make_plan
    from nnlab.study._record import SPEC_ATTR, write_record

    with contextlib.chdir(path.parent.parent):  # the configuration the command will find there
        spec = StudySpec.precision(bits="4", rounding="truncate,nearest", seeds=1, base={})
        plan = make_plan(spec, output_dir=path.parent.name, workers=1, storage=None, study_name=None, data=None,
                         progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(storage=open_storage(plan.storage), study_name=plan.study_name,
                                    direction="maximize")
        study.set_user_attr(SPEC_ATTR, plan.record)
        study.set_user_attr(KIND_ATTR, f"study-{plan.kind}")
        write_record(plan)


CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("study size", "nnlab study compare --variant a= --variant b= --seeds 4294967295 --output-dir s", {},
     ["error: --seeds 4294967295: a study runs at most 1000 seeds (every cell trains once per seed); give fewer"]),
    ("study size", f"nnlab study precision --bits {_ALL_BITS} --policy float32,mixed_bfloat16,mixed_float16 "
                   "--seeds 100 --output-dir s", {},
     ["error: --seeds 100 × 210 cells = 21000 runs; a study runs at most 10000 (cells × seeds): give fewer seeds "
      "or cells"]),
    ("study arguments", "nnlab study compare --variant a= --variant b=physics_loss_weight=NaN --output-dir s", {},
     ["error: --variant b: physics_loss_weight = NaN is invalid: JSON NaN/Infinity is not allowed"]),
    ("study arguments", f"nnlab study compare --variant a= --variant b= --study-name {_LONG_NAME} --output-dir s",
     {}, [f"error: --study-name: '{'x' * 40}...' is 300 characters long; at most 200 are allowed"]),
    ("study rerun", "nnlab study precision --bits 4 --rounding nearest,truncate --seeds 1 --output-dir s",
     {"s/study_journal.log": _precision_study_truncate_nearest},
     ["error: study 'nnlab-study-precision' in s/study_journal.log was created with other settings: cells: 3 "
      "(now 3, in another order): the study has --rounding truncate,nearest (now nearest,truncate)"]),
]
