"""Load and validate the declarative tables in ``mappings/`` and the organisation's policy.

Any problem raises :class:`adapter.errors.PolicyError` naming the file and the element, so an
invalid policy stops start-up with a clear message.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapter.errors import ConfigurationError, PolicyError
from adapter.model.ae_title import split_caller
from adapter.model.photo import PhotoKind
from adapter.model.policy import Policy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Coding(_Strict):
    system: str
    code: str
    display: str | None = None

    def as_fhir(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


class PurposeEntry(_Strict):
    display: str
    parent: str | None = None
    view: str = Field(pattern="^(full|deidentified|pseudonymised)$")


class PurposeTable(_Strict):
    system: str
    oid: str
    codes: dict[str, PurposeEntry]

    def ancestors(self, code: str) -> list[str]:
        """The code and its parents up to the root, nearest first."""
        return list(_hierarchy(self)[1].get(code, (code,)))  # a code not in the table has no parents here

    def descendants(self, code: str) -> tuple[str, ...]:
        """The codes of the table under ``code`` in the hierarchy (not ``code``), in table order."""
        return _hierarchy(self)[2].get(code, ())


def _walk_up(table: PurposeTable, code: str) -> tuple[str, ...]:
    out: list[str] = []
    cur: str | None = code
    while cur is not None and cur not in out:
        out.append(cur)
        cur = table.codes[cur].parent if cur in table.codes else None
    return tuple(out)


#: Each purpose table's hierarchy, walked once: the consent decision asks for ancestors and
#: descendants on every read (its labels look at every purpose under a candidate), and a walk
#: per question made decide() three times slower. Keyed by the table's id, the table kept beside
#: it (so an id reused by a new table is not mistaken for it); tables are few (one per policy
#: loaded), the cache is emptied past _HIERARCHIES_MAX.
_HIERARCHIES: dict[int, tuple[PurposeTable, dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = {}
_HIERARCHIES_MAX = 64


def _hierarchy(table: PurposeTable) -> tuple[PurposeTable, dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    entry = _HIERARCHIES.get(id(table))
    if entry is None or entry[0] is not table:
        up = {c: _walk_up(table, c) for c in table.codes}
        down = {c: tuple(d for d in table.codes if d != c and c in up[d]) for c in table.codes}
        if len(_HIERARCHIES) >= _HIERARCHIES_MAX:
            _HIERARCHIES.clear()
        entry = _HIERARCHIES[id(table)] = (table, up, down)
    return entry


class KindEntry(_Strict):
    resource: str = Field(pattern="^(Media|DocumentReference)$")
    display: str
    modality: Coding
    category: Coding
    type: Coding | None = None
    needs_care_consent: bool = Field(alias="needsCareConsent")
    #: What the picture may show that no view cleans (the adapter never changes pixels): the
    #: person (DICOM RecognizableVisualFeatures), text naming the patient by nature (a document,
    #: a screen: BurnedInAnnotation YES). Either keeps a restricted view from claiming anonymised.
    recognizable: bool
    #: Absent (a kinds.yaml from before it was read): True, the picture may identify (fail closed).
    text_in_pixels: bool = Field(True, alias="textInPixels")
    warning: str | None = None
    #: The DocumentReference types that say, without the adapter's photo-kind extension, that a
    #: record sent over ``POST /fhir`` is of this kind (adapter.mapping.transaction): the
    #: ``document`` kind's only, since a code that made a record clinical or secondary would decide
    #: its consent from a guess at what the sender meant (safety review finding 2).
    document_types: tuple[Coding, ...] = Field((), alias="documentTypes")


class LateralityEntry(_Strict):
    code: str
    display: str
    dicom: str = Field(pattern="^[RLB]$")  # ImageLaterality (PS3.3 C.7.6.1); U would say "unpaired"


class BodySiteTable(_Strict):
    system: str
    codes: dict[str, str]
    #: Whether each code is a paired body part (or one found on either side): series Laterality
    #: (PS3.3 C.7.3.1, Type 2C) is written only for these (adapter.mapping.dicom_photo). Every
    #: code is listed, so a site added without saying so stops start-up instead of giving objects
    #: dciodvfy refuses.
    paired: dict[str, bool]
    laterality: dict[str, LateralityEntry]

    @model_validator(mode="after")
    def _every_code_paired_or_not(self) -> BodySiteTable:
        missing = [c for c in self.codes if c not in self.paired]
        unknown = [c for c in self.paired if c not in self.codes]
        if missing or unknown:
            raise ValueError("must say for every code, and only those, whether it is paired"
                             + (f"; not listed: {missing}" if missing else "")
                             + (f"; not a code: {unknown}" if unknown else ""))
        return self


@dataclass(frozen=True)
class Tables:
    """Every mapping table plus the policy, loaded once at start-up and passed down."""

    policy: Policy
    purposes: PurposeTable
    kinds: dict[PhotoKind, KindEntry]
    body_sites: BodySiteTable

    def pixels_may_identify(self, kind: PhotoKind) -> bool:
        """Whether a picture of ``kind`` may identify its patient (kinds.yaml ``recognizable`` or
        ``textInPixels``); True for a kind the tables do not know (fail closed)."""
        entry = self.kinds.get(kind)
        return entry is None or entry.recognizable or entry.text_in_pixels

    @property
    def kind_warnings(self) -> frozenset[str]:
        """The kinds' fixed warnings (kinds.yaml ``warning``: the secondary image's "review the
        original"), holding no patient data: what the restricted views keep word for word."""
        return frozenset(entry.warning for entry in self.kinds.values() if entry.warning)


#: What a missing file's message says, so that the operator knows which setting to correct.
_POLICY_NOT_FOUND = "policy file not found (ADAPTER_POLICY)"
_TABLE_NOT_FOUND = "mapping table not found (ADAPTER_MAPPINGS_DIR; by default the policy file's folder)"


class _DuplicateKey(yaml.YAMLError):
    """A mapping of a YAML file gives one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader refusing a key given twice in one mapping: safe_load keeps the last
    silently (YAML 1.2 7.2 says keys are unique), so a second ``consent:`` block at the end of a
    policy replaced the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<``: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the constructor below says so
                continue
            if duplicate:
                raise _DuplicateKey(f"duplicate key {str(key)[:60]!r} at line {key_node.start_mark.line + 1} "
                                    f"(first at line {seen[key]}): the second would silently replace the first")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, not_found: str = _TABLE_NOT_FOUND) -> Any:
    try:
        with path.open("r", encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError as exc:
        raise PolicyError(f"{path}: {not_found}") from exc
    except _DuplicateKey as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc


def _keys(model: type[BaseModel]) -> set[str]:
    """Every key a table of ``model`` may have, at any depth (field aliases, as the YAML has them)."""
    keys: set[str] = set()
    pending, seen = [model], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for name, field in current.model_fields.items():
            keys.add(field.alias or name)
            for arg in (field.annotation, *get_args(field.annotation)):
                for inner in (arg, *get_args(arg)):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        pending.append(inner)
    return keys


def _problem(err: Any, keys: set[str]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    if err["type"] == "extra_forbidden" and err["loc"]:
        close = difflib.get_close_matches(str(err["loc"][-1]), sorted(keys), n=1, cutoff=0.75)
        return f"{where}: no such key{f' (did you mean {close[0]}?)' if close else ''}"
    return f"{where}: {err['msg']}"


def _validate(model: type[BaseModel], data: Any, path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        keys = _keys(model)
        problems = "; ".join(_problem(err, keys) for err in exc.errors())
        raise PolicyError(f"{path}: {problems}", expression=[
            ".".join(str(p) for p in err["loc"]) for err in exc.errors()]) from exc


def load_policy(path: Path, purposes: PurposeTable) -> Policy:
    policy: Policy = _validate(Policy, _read_yaml(path, _POLICY_NOT_FOUND), path)
    named = [("consent.explicitPurposes", c) for c in policy.consent.explicit_purposes]
    named += [("consent.carePurposes", c) for c in policy.consent.care_purposes]
    named += [("consent.patientImpliedPurposes", c) for c in policy.consent.patient_implied_purposes]
    named += [("breakGlass.purposes", c) for c in policy.break_glass.purposes]
    unknown = [f"{where}: {code}" for where, code in named if code not in purposes.codes]
    if unknown:
        raise PolicyError(f"{path}: unknown purpose-of-use code(s): {', '.join(unknown)}")
    for i, title in enumerate(policy.allowed_ae_titles):
        # PS3.5 6.2, and the hosts it is bound to (adapter.dicom.ae, which names neither this
        # file nor the element)
        try:
            split_caller(title, f"{path}: allowedAETitles[{i}]")
        except ConfigurationError as exc:
            raise PolicyError(exc.diagnostics, expression=f"allowedAETitles[{i}]") from None
    overlap = set(policy.consent.explicit_purposes) & set(policy.consent.care_purposes)
    if overlap:
        raise PolicyError(f"{path}: purposes both care and explicit-consent: {sorted(overlap)}")
    # a break-glass purpose gets the full view without a Consent, and a code is break-glass when
    # it or a parent is listed there (adapter.consent.rules.classify_purpose): an explicit-consent
    # (or care) purpose listed there too, or under a parent listed there, would never be what the
    # policy also says it is (TRAIN read identified records when HOPERAT, its parent, was listed)
    glass = set(policy.break_glass.purposes)
    for element, listed in (("consent.explicitPurposes", policy.consent.explicit_purposes),
                            ("consent.carePurposes", policy.consent.care_purposes)):
        clashes = sorted(f"{code} (under {', '.join(sorted(glass & set(purposes.ancestors(code))))})"
                         if code not in glass else code
                         for code in listed if glass & set(purposes.ancestors(code)))
        if clashes:
            raise PolicyError(f"{path}: purposes of {element} that breakGlass.purposes makes break-glass (listed "
                              f"there, or a parent of theirs is): {', '.join(clashes)}",
                              expression=["breakGlass.purposes", element])
    return policy


def load_tables(mappings_dir: Path, policy_path: Path) -> Tables:
    if policy_path.is_dir():  # the folder of mappings/ named instead of its policy.yaml
        raise PolicyError(f"{policy_path} is a directory, not a file (ADAPTER_POLICY): name the policy file in it "
                          f"({policy_path / 'policy.yaml'}, say)")
    if not policy_path.is_file():
        # before the tables: by default they are read from the policy's folder, so a mistyped
        # policy path would otherwise be reported as a missing table
        raise PolicyError(f"{policy_path}: {_POLICY_NOT_FOUND}")
    purposes: PurposeTable = _validate(PurposeTable, _read_yaml(mappings_dir / "purposes.yaml"),
                                       mappings_dir / "purposes.yaml")
    for code, entry in purposes.codes.items():
        if entry.parent is not None and entry.parent not in purposes.codes:
            raise PolicyError(f"{mappings_dir / 'purposes.yaml'}: {code}.parent {entry.parent} is unknown")
        if entry.parent is not None and code in _walk_up(purposes, entry.parent):
            # no root: each code of the loop would cover the others (and a walk down never ends)
            raise PolicyError(f"{mappings_dir / 'purposes.yaml'}: {code}.parent {entry.parent} makes a cycle")
    kinds_raw = _read_yaml(mappings_dir / "kinds.yaml")
    if not isinstance(kinds_raw, dict) or set(kinds_raw) != {k.value for k in PhotoKind}:
        raise PolicyError(f"{mappings_dir / 'kinds.yaml'}: must map exactly {[k.value for k in PhotoKind]}")
    kinds = {PhotoKind(k): _validate(KindEntry, v, mappings_dir / "kinds.yaml") for k, v in kinds_raw.items()}
    for kind, entry in kinds.items():
        if entry.document_types and kind is not PhotoKind.DOCUMENT:
            raise PolicyError(f"{mappings_dir / 'kinds.yaml'}: {kind.value}.documentTypes: only the document kind "
                              "lists DocumentReference types (a type that made a photo clinical or secondary would "
                              "decide its consent from a code)")
    body_sites: BodySiteTable = _validate(BodySiteTable, _read_yaml(mappings_dir / "body_sites.yaml"),
                                          mappings_dir / "body_sites.yaml")
    policy = load_policy(policy_path, purposes)
    return Tables(policy=policy, purposes=purposes, kinds=kinds, body_sites=body_sites)
