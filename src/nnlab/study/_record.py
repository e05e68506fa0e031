"""The study's record: who owns the study directory, what the stored spec says, the study's data.

Every check here runs before anything is written, so a refused command changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnlab.errors import ConfigError

__all__ = [
    "RECORD_FILE",
    "SPEC_ATTR",
    "check_data",
    "check_directory_owner",
    "check_outputs",
    "check_spec",
    "prepare_data",
    "stored_spec",
    "write_record",
]

RECORD_FILE = "study_spec.json"
SPEC_ATTR = "nnlab_study_spec"


def check_directory_owner(plan: Any, exists_in_storage: bool | None) -> None:
    """The study directory holds this study's outputs, or none: another study's are never overwritten.

    ``exists_in_storage`` None: only what the directory itself shows (before the storage is opened).
    """
    record = plan.study_dir / RECORD_FILE
    runs = plan.runs_path
    if record.exists():
        try:
            owner = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--output-dir: '{plan.shown(record)}' is not a study record ({exc}); move it or "
                              "choose another --output-dir") from None
        if not isinstance(owner, dict) or (owner.get("study_name"), owner.get("storage")) != (
                plan.study_name, _storage_label(plan)):
            got = (owner.get("study_name"), owner.get("storage")) if isinstance(owner, dict) else (None, None)
            raise ConfigError(f"--output-dir: '{plan.shown_dir}' holds study '{got[0]}' in {got[1]}; this command "
                              f"runs study '{plan.study_name}' in {_storage_label(plan)}. Choose another "
                              "--output-dir (or the same --storage and --study-name to continue that study)")
        if exists_in_storage is False:
            raise ConfigError(f"--output-dir: '{plan.shown_dir}' holds the outputs of study '{plan.study_name}', "
                              f"which {plan.shown_storage} no longer has; move them or choose another --output-dir")
    elif runs.exists():
        raise ConfigError(f"--output-dir: '{plan.shown(runs)}' exists and was not written by study "
                          f"'{plan.study_name}' "
                          f"(no {RECORD_FILE} beside it); move it or choose another --output-dir")


def _storage_label(plan: Any) -> str:
    """The storage as the record names it: a journal inside the study directory relative to it (movable)."""
    if plan.storage.kind == "journal" and Path(plan.storage.location).is_relative_to(plan.study_dir):
        return Path(plan.storage.location).relative_to(plan.study_dir).as_posix()
    return plan.storage.label


def write_record(plan: Any) -> Path:
    from nnlab._files import atomic_write_json

    path = plan.study_dir / RECORD_FILE
    atomic_write_json(path, {"study_name": plan.study_name, "storage": _storage_label(plan),
                             "data": str(plan.data_path), "spec": plan.record})
    return path


def _differences(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two study records, seeds and data aside, in words."""
    from nnlab.config import shorten

    out = []
    for name in ("kind", "keys", "reference", "preset"):
        if stored.get(name) != now.get(name):
            out.append(f"{name} {shorten(json.dumps(stored.get(name)))} (now {shorten(json.dumps(now.get(name)))})")

    def labels(record: Mapping[str, Any]) -> dict[str, Any]:
        return {" ".join(f"{k}={v}" for k, v in c["key"].items()): c["overrides"] for c in record.get("cells", [])}

    old, new = labels(stored), labels(now)
    if list(old) != list(new):
        removed = [c for c in old if c not in new]
        added = [c for c in new if c not in old]
        parts = ([f"without {', '.join(removed)}"] if removed else []) + ([f"with {', '.join(added)}"] if added else [])
        order = "" if parts else _order_text(stored, now)
        out.append(shorten(f"cells: {len(old)} (now {len(new)}, {'; '.join(parts) or 'in another order'})", 300)
                   + order)
    for label in old.keys() & new.keys():
        if old[label] != new[label]:
            out.append(f"cell {label}: overrides {shorten(json.dumps(old[label]))} (now "
                       f"{shorten(json.dumps(new[label]))})")
    sb, nb = stored.get("base") or {}, now.get("base") or {}
    for key in sorted(set(sb) | set(nb)):
        if sb.get(key) != nb.get(key):
            out.append(f"{key}={shorten(json.dumps(sb.get(key)))} (now {shorten(json.dumps(nb.get(key)))})")
    return out


# The option that orders each key column's values, and the value that is the reference's, not given.
_ORDER_OPTIONS = {"variant": ("--variant", None), "rounding": ("--rounding", "none"), "bits": ("--bits", 24),
                  "policy": ("--policy", None), "schedule": ("--schedule", None)}


def _order_text(stored: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """``: the study has --rounding truncate,nearest (now nearest,truncate)``: the original order of the options."""
    def values(record: Mapping[str, Any], column: str) -> list[str]:
        skip = _ORDER_OPTIONS[column][1]
        seen = [c["key"][column] for c in record.get("cells", []) if column in c["key"]]
        return [str(v) for v in dict.fromkeys(seen) if v != skip]

    parts = []
    for column, (option, _) in _ORDER_OPTIONS.items():
        was, is_now = values(stored, column), values(now, column)
        if was != is_now:
            parts.append(f"{option} {','.join(was)} (now {','.join(is_now)})")
    return f": the study has {'; '.join(parts)}" if parts else ""


def stored_spec(storage: Any, plan: Any) -> dict[str, Any] | None:
    """The record of the study in the storage; None when there is no such study yet."""
    try:
        study_id = storage.get_study_id_from_name(plan.study_name)
    except KeyError:
        return None
    from nnlab.orchestration import claim_study

    claim_study(storage, plan.study_name, f"study-{plan.kind}", label=plan.shown_storage)  # not a search's
    attrs = storage.get_study_user_attrs(study_id)
    record = attrs.get(SPEC_ATTR)
    if not isinstance(record, dict):
        raise ConfigError(f"--study-name: study '{plan.study_name}' in {plan.shown_storage} was not created by "
                          "nnlab study; choose another --study-name")
    return record


def check_spec(stored: Mapping[str, Any], plan: Any, *, data: bool) -> None:
    """Refuse a rerun whose spec differs from the stored one (``data``: compare the data digest too)."""
    diffs = _differences(stored, plan.record)
    old_seeds, new_seeds = list(stored.get("seeds") or []), list(plan.seeds)
    if new_seeds[:len(old_seeds)] != old_seeds:
        diffs.append(f"seeds {_seed_text(old_seeds)} (now {_seed_text(new_seeds)}; --seeds may only grow)")
    if data and stored.get("data_sha256") != plan.data_sha256:
        diffs.append(f"data SHA-256 {str(stored.get('data_sha256'))[:12]}... (now {plan.data_sha256[:12]}... of "
                     f"{plan.shown(plan.data_path)}; pass the study's own data with --data FILE)")
    if diffs:
        raise ConfigError(f"study '{plan.study_name}' in {plan.shown_storage} was created with other settings: "
                          f"{'; '.join(diffs)}. Rerun with the original options to continue it, or choose another "
                          "--output-dir (or --study-name)")


def _seed_text(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds))


# --- the data ------------------------------------------------------------------


def _generation_metadata(plan: Any) -> dict[str, Any]:
    from nnlab.config import Config
    from nnlab.data import GENERATOR_NAME

    gen = Config.from_flat(plan.base).generation
    return {"source": GENERATOR_NAME, "generation_config": gen.model_dump(mode="json"),
            "num_particles": gen.num_particles_default, "seed": gen.random_seed}


def check_data(plan: Any) -> None:
    """Read-only, before anything is written: the study's outputs may be written (:func:`check_outputs`);
    ``--data`` is valid particle data, or a valid table that fits every cell; the study's own ``particles.csv``, if there is one, holds exactly
    the data the base configuration asks for."""
    from nnlab.data import load_particle_data, validate_particle_data
    from nnlab.data import sidecar_path, stale_reason

    check_outputs(plan)  # no file of the user's replaced, nothing written through a link out of the directory
    path = plan.data_path
    if plan.data_generated and path.exists():
        expected = _generation_metadata(plan)
        try:
            meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("source") != expected["source"]:
            raise ConfigError(f"--output-dir: '{plan.shown(path)}' is not particle data generated by this study "
                              "(no nnlab sidecar); pass it with --data FILE, or move it")
        reason = stale_reason(meta, expected, path)
        if reason is not None:
            raise ConfigError(f"--output-dir: '{plan.shown(path)}' holds other particle data than this study asks for "
                              f"({reason}); rerun with the original options, or choose another --output-dir")
    if not plan.data_generated and plan.base.get("data_targets"):
        _check_table(plan)
    elif not plan.data_generated:
        validate_particle_data(load_particle_data(path), source=path)  # bad data fails before anything is written


def _check_table(plan: Any) -> None:
    """A ``--data`` table: every cell's configuration fits it, and its first seed's split is prepared now
    (every problem of the table at once, before anything is written; the split is reused by the first unit)."""
    from nnlab.config import Config
    from nnlab.study._cells import SEED_KEY
    from nnlab.study._worker import seed_source

    seed = plan.seeds[0]
    source = seed_source(plan.data_path, plan.base, seed, shown=plan.shown_data or None)
    base = Config.from_flat(plan.base)
    for cell in plan.cells:
        try:
            source.check_config(base.updated({**cell["overrides"], SEED_KEY: seed}, source=cell["source"]))
        except ConfigError as exc:
            if "physics_loss_weight" not in cell["overrides"]:
                raise  # the base configuration's (--set, --preset): the message says it all
            raise ConfigError(f"{cell['source']}: {exc}") from None
    source.prepare()


def check_outputs(plan: Any) -> None:
    """Read-only, before any unit trains: nothing the study writes would replace a file that is not
    nnlab's, or be written through a symbolic link out of the study directory.

    The summary outputs are checked by :func:`nnlab.study._summary.check_study_outputs`; the
    particle data's sidecar must be nnlab's (its ``source`` the generator); the runs'
    ``configuration_log.csv`` must be nnlab's log (:func:`nnlab.runs.check_config_log`).
    """
    from nnlab.data import GENERATOR_NAME, sidecar_path
    from nnlab.runs import check_config_log
    from nnlab.study._summary import check_inside, check_study_outputs

    if not plan.study_dir.exists():
        return
    check_study_outputs(plan.study_dir, plan.kind, shown=plan.shown, shown_dir=plan.shown_dir)
    written = [plan.study_dir / RECORD_FILE, plan.runs_path]
    if plan.data_generated:
        written += [plan.data_path, sidecar_path(plan.data_path)]
    for path in written:
        if path.parent == plan.study_dir:
            check_inside(path, plan.study_dir, "--output-dir", plan.shown(path), plan.shown_dir)
    sidecar = sidecar_path(plan.data_path)
    if plan.data_generated and not plan.data_path.exists() and sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("source") != GENERATOR_NAME:
            raise ConfigError(f"--output-dir: '{plan.shown(sidecar)}' exists and is not the sidecar nnlab writes "
                              f"beside generated particle data; the study would replace it when it generates "
                              f"'{plan.shown(plan.data_path)}'. Move the file or choose another --output-dir")
    check_config_log(plan.study_dir, shown=plan.shown_dir)


def prepare_data(plan: Any) -> tuple[bool, str]:
    """Generate the study's particle CSV unless it has one; returns (created, SHA-256).

    Generated once, atomically, under the study's lock (concurrent starts
    generate it once); ``--data`` is used as found.
    """
    from nnlab._files import locked
    from nnlab.runs import file_digest

    created = False
    if plan.data_generated:
        with locked(plan.lock_path):
            if not plan.data_path.exists():
                from nnlab.config import Config
                from nnlab.data import generate_particle_data, save_particle_data

                gen = Config.from_flat(plan.base).generation
                df = generate_particle_data(gen.num_particles_default, gen, gen.random_seed)
                save_particle_data(df, plan.data_path, metadata=_generation_metadata(plan))
                created = True
            else:
                check_data(plan)  # another process may have written it since
    return created, file_digest(plan.data_path)
