#!/usr/bin/env python3
"""Generate the snapshots of kap-gateway's StructureDefinitions.

Each source file in profiles/src/ is a StructureDefinition without a snapshot (only the differential). This script
takes the base definition's snapshot from the official FHIR R4 package, applies the differential element by element,
and writes profiles/StructureDefinition-<id>.json with both the snapshot and the differential.

Usage:
    python3 profiles/tools/generate.py BASE [--src DIR] [--out DIR] [--check]

BASE is the FHIR R4 (4.0.1) package that holds the core definitions as package/StructureDefinition-<Type>.json:
the tarball of hl7.fhir.r4.core (or hl7.fhir.r4.examples, which carries the same definitions), or a directory where
it was unpacked. With --check nothing is written; the exit code is 1 if any generated file differs from the one on
disk (use it in CI to catch a source edited without regenerating).

What is merged, by element id: min, max, short, definition, comment, requirements, mustSupport, type (including
targetProfile and profile), binding, fixed[x] and pattern[x] (a new one replaces any inherited one), slicing and
any other ElementDefinition property (replaced); constraint and condition are appended. A differential id that is
not in the base snapshot is either a slice (`path:sliceName`: the sliced element and its children are copied) or
a child of a data type element (`Observation.meta.security`: the data type is unfolded from its own definition).
The script refuses constraints that loosen the base (wider cardinality, new types, weaker required bindings) and a
differential whose elements are out of snapshot order.

Python 3 standard library only.
"""

import argparse
import copy
import json
import os
import sys
import tarfile

CORE = "http://hl7.org/fhir/StructureDefinition/"

# StructureDefinition properties in the order the R4 specification lists them.
SD_KEY_ORDER = [
    "resourceType", "id", "meta", "implicitRules", "language", "text", "contained", "extension",
    "modifierExtension", "url", "identifier", "version", "name", "title", "status", "experimental", "date",
    "publisher", "contact", "description", "useContext", "jurisdiction", "purpose", "copyright", "keyword",
    "fhirVersion", "mapping", "kind", "abstract", "context", "contextInvariant", "type", "baseDefinition",
    "derivation", "snapshot", "differential",
]

# ElementDefinition properties in the order the R4 specification lists them.
ED_KEY_ORDER = [
    "id", "extension", "modifierExtension", "path", "representation", "sliceName", "sliceIsConstraining",
    "label", "code", "slicing", "short", "definition", "comment", "requirements", "alias", "min", "max", "base",
    "contentReference", "type", "defaultValue", "meaningWhenMissing", "orderMeaning", "fixed", "pattern",
    "example", "minValue", "maxValue", "maxLength", "condition", "constraint", "mustSupport", "isModifier",
    "isModifierReason", "isSummary", "binding", "mapping",
]

BINDING_RANK = {"example": 0, "preferred": 1, "extensible": 2, "required": 3}


class GenerateError(Exception):
    """A source definition that cannot be applied to its base."""


class BasePackage:
    """Reads core StructureDefinitions from an R4 package tarball or directory, on demand."""

    def __init__(self, location):
        self.location = location
        self.cache = {}
        self.tar = None
        self.members = {}
        if os.path.isfile(location):
            self.tar = tarfile.open(location, "r:*")
            for member in self.tar.getmembers():
                if member.isfile():
                    self.members[os.path.basename(member.name)] = member
        elif os.path.isdir(location):
            for folder in (os.path.join(location, "package"), location):
                if os.path.isdir(folder):
                    for name in os.listdir(folder):
                        self.members.setdefault(name, os.path.join(folder, name))
        else:
            raise GenerateError(f"base package not found: {location}")
        if "StructureDefinition-Resource.json" not in self.members:
            raise GenerateError(f"{location} does not look like an R4 core package (no StructureDefinition-Resource.json)")

    def get(self, url):
        if url in self.cache:
            return self.cache[url]
        if not url.startswith(CORE):
            raise GenerateError(f"not a core definition: {url}")
        name = "StructureDefinition-" + url[len(CORE):] + ".json"
        member = self.members.get(name)
        if member is None:
            raise GenerateError(f"{url} is not in the base package")
        if self.tar is not None:
            with self.tar.extractfile(member) as f:
                sd = json.load(f)
        else:
            with open(member, encoding="utf-8") as f:
                sd = json.load(f)
        if sd.get("url") != url:
            raise GenerateError(f"{name} has url {sd.get('url')}, expected {url}")
        if sd.get("fhirVersion") != "4.0.1":
            raise GenerateError(f"{url} is FHIR {sd.get('fhirVersion')}, expected 4.0.1")
        self.cache[url] = sd
        return sd


def cardinality(value):
    return float("inf") if value == "*" else int(value)


def ordered(obj, key_order):
    rank = {k: i for i, k in enumerate(key_order)}

    def key(k):
        for prefix in ("fixed", "pattern", "defaultValue", "minValue", "maxValue"):
            if k.startswith(prefix) and k not in rank:
                return (rank.get(prefix, len(key_order)), k)
        return (rank.get(k, len(key_order)), k)

    return {k: obj[k] for k in sorted(obj, key=key)}


def split_id(eid):
    """Splits an element id on the dots that separate elements (slice names here never contain dots)."""
    return eid.split(".")


class Snapshot:
    """The snapshot under construction: a list of ElementDefinitions with lookup by id."""

    def __init__(self, elements, base, profile_types, owner):
        self.elements = elements
        # The base definition of each element, before this profile constrained it: slices start from it.
        self.original = {e["id"]: copy.deepcopy(e) for e in elements}
        self.base = base
        self.profile_types = profile_types
        self.owner = owner

    def index(self, eid):
        for i, e in enumerate(self.elements):
            if e["id"] == eid:
                return i
        return None

    def last_descendant(self, eid):
        """Position of the last element that belongs to eid: itself, its children and its slices."""
        last = self.index(eid)
        for i in range(last + 1, len(self.elements)):
            other = self.elements[i]["id"]
            if other.startswith(eid + ".") or other.startswith(eid + ":"):
                last = i
            else:
                break
        return last

    def find_or_create(self, eid):
        found = self.index(eid)
        if found is not None:
            return found
        segs = split_id(eid)
        if len(segs) < 2:
            raise GenerateError(f"{self.owner}: root element {eid} does not match the base type")
        last = segs[-1]
        if ":" in last:
            return self.create_slice(eid, ".".join(segs[:-1] + [last.split(":", 1)[0]]), last.split(":", 1)[1])
        parent_id = ".".join(segs[:-1])
        parent_pos = self.find_or_create(parent_id)
        if self.last_descendant(parent_id) != parent_pos and any(
            e["id"].startswith(parent_id + ".") for e in self.elements
        ):
            raise GenerateError(f"{self.owner}: {eid}: the base has no such element")
        self.unfold(parent_pos)
        found = self.index(eid)
        if found is None:
            raise GenerateError(f"{self.owner}: {eid}: the data type of {parent_id} has no such element")
        return found

    def create_slice(self, eid, sliced_id, slice_name):
        sliced_pos = self.find_or_create(sliced_id)
        sliced = self.elements[sliced_pos]
        if "slicing" not in sliced:
            raise GenerateError(f"{self.owner}: {eid}: {sliced_id} has no slicing defined before the slice")
        copies = []
        for e in self.elements[sliced_pos:]:
            if e["id"] == sliced_id or e["id"].startswith(sliced_id + "."):
                c = copy.deepcopy(self.original.get(e["id"], e))
                c["id"] = eid + c["id"][len(sliced_id):]
                copies.append(c)
            elif not e["id"].startswith(sliced_id + ":"):
                break
        root = copies[0]
        root.pop("slicing", None)
        root["sliceName"] = slice_name
        insert_at = self.last_descendant(sliced_id) + 1
        self.elements[insert_at:insert_at] = [ordered(c, ED_KEY_ORDER) for c in copies]
        return insert_at

    def unfold(self, parent_pos):
        parent = self.elements[parent_pos]
        codes = sorted({t["code"] for t in parent.get("type", [])})
        if len(codes) != 1:
            raise GenerateError(
                f"{self.owner}: cannot unfold {parent['id']}: it has types {codes}; restrict it to one type first"
            )
        type_sd = self.base.get(CORE + codes[0])
        type_name = type_sd["type"]
        children = []
        for child in type_sd["snapshot"]["element"][1:]:
            c = copy.deepcopy(child)
            c["id"] = parent["id"] + c["id"][len(type_name):]
            c["path"] = parent["path"] + c["path"][len(type_name):]
            children.append(c)
        self.elements[parent_pos + 1:parent_pos + 1] = children

    def target_type(self, url):
        if url.startswith(CORE):
            return url[len(CORE):]
        if url in self.profile_types:
            return self.profile_types[url]
        raise GenerateError(f"{self.owner}: unknown target profile {url}")

    def check_types(self, eid, current, new):
        allowed = {t["code"]: t for t in current}
        for t in new:
            if t["code"] not in allowed:
                raise GenerateError(f"{self.owner}: {eid}: type {t['code']} is not allowed by the base")
            base_targets = allowed[t["code"]].get("targetProfile", [])
            base_types = {self.target_type(u) for u in base_targets}
            for target in t.get("targetProfile", []):
                if base_targets and "Resource" not in base_types and self.target_type(target) not in base_types:
                    raise GenerateError(
                        f"{self.owner}: {eid}: target {target} is not one of the base targets {sorted(base_types)}"
                    )

    def merge(self, pos, diff):
        e = self.elements[pos]
        eid = diff["id"]
        if diff.get("path") != e["path"]:
            raise GenerateError(f"{self.owner}: {eid}: path {diff.get('path')} does not match {e['path']}")
        new_min = diff.get("min", e.get("min", 0))
        new_max = diff.get("max", e.get("max", "*"))
        if "min" in diff and diff["min"] < e.get("min", 0):
            raise GenerateError(f"{self.owner}: {eid}: min {diff['min']} is below the base min {e['min']}")
        if "max" in diff and cardinality(diff["max"]) > cardinality(e.get("max", "*")):
            raise GenerateError(f"{self.owner}: {eid}: max {diff['max']} is above the base max {e['max']}")
        if new_min > cardinality(new_max):
            raise GenerateError(f"{self.owner}: {eid}: min {new_min} is above max {new_max}")
        if "type" in diff:
            self.check_types(eid, e.get("type", []), diff["type"])
        if "binding" in diff and "binding" in e:
            if BINDING_RANK[diff["binding"]["strength"]] < BINDING_RANK[e["binding"]["strength"]] and \
                    e["binding"]["strength"] == "required":
                raise GenerateError(f"{self.owner}: {eid}: weakens a required binding")
        for key, value in diff.items():
            if key in ("id", "path"):
                continue
            if key in ("constraint", "condition"):
                existing = e.setdefault(key, [])
                for item in value:
                    if key == "constraint":
                        item = dict(item)
                        item.setdefault("source", self.owner)
                        existing[:] = [c for c in existing if c.get("key") != item["key"]]
                    elif item in existing:
                        continue
                    existing.append(item)
                continue
            if key.startswith("fixed") or key.startswith("pattern"):
                for old in [k for k in e if k.startswith("fixed") or k.startswith("pattern")]:
                    del e[old]
            e[key] = copy.deepcopy(value)
        self.elements[pos] = ordered(e, ED_KEY_ORDER)


def generate(src, base, profile_types):
    url = src["url"]
    if src.get("derivation") != "constraint":
        raise GenerateError(f"{url}: derivation must be constraint")
    base_sd = base.get(src["baseDefinition"])
    if base_sd.get("type") != src.get("type"):
        raise GenerateError(f"{url}: type {src.get('type')} does not match the base type {base_sd.get('type')}")
    snap = Snapshot(copy.deepcopy(base_sd["snapshot"]["element"]), base, profile_types, url)
    previous = -1
    for diff in src["differential"]["element"]:
        if "id" not in diff or "path" not in diff:
            raise GenerateError(f"{url}: every differential element needs an id and a path")
        pos = snap.find_or_create(diff["id"])
        snap.merge(pos, diff)
        pos = snap.index(diff["id"])
        if pos <= previous:
            raise GenerateError(f"{url}: differential element {diff['id']} is out of snapshot order")
        previous = pos
    out = {k: v for k, v in src.items() if k not in ("snapshot",)}
    if "mapping" not in out and "mapping" in base_sd:
        out["mapping"] = copy.deepcopy(base_sd["mapping"])
    out["snapshot"] = {"element": snap.elements}
    return ordered(out, SD_KEY_ORDER)


def dumps(obj):
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    profiles = os.path.dirname(here)
    parser = argparse.ArgumentParser(description="Generate snapshots of the kap-gateway StructureDefinitions.")
    parser.add_argument("base", help="hl7.fhir.r4.core 4.0.1 package: tarball or unpacked directory")
    parser.add_argument("--src", default=os.path.join(profiles, "src"), help="source definitions (default: profiles/src)")
    parser.add_argument("--out", default=profiles, help="where to write StructureDefinition-*.json (default: profiles)")
    parser.add_argument("--check", action="store_true", help="write nothing; fail if any output is stale")
    args = parser.parse_args(argv)

    try:
        base = BasePackage(args.base)
        sources = []
        for name in sorted(os.listdir(args.src)):
            if name.endswith(".json"):
                with open(os.path.join(args.src, name), encoding="utf-8") as f:
                    src = json.load(f)
                if src.get("resourceType") != "StructureDefinition":
                    raise GenerateError(f"{name}: not a StructureDefinition")
                if name != src["id"] + ".json":
                    raise GenerateError(f"{name}: file name must be the id ({src['id']}.json)")
                sources.append(src)
        profile_types = {s["url"]: s["type"] for s in sources}
        stale = []
        for src in sources:
            text = dumps(generate(src, base, profile_types))
            path = os.path.join(args.out, f"StructureDefinition-{src['id']}.json")
            current = None
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    current = f.read()
            if current != text:
                stale.append(os.path.basename(path))
                if not args.check:
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(text)
    except GenerateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        for name in stale:
            print(f"stale: {name}", file=sys.stderr)
        print(f"{len(sources)} definitions, {len(stale)} stale")
        return 1 if stale else 0
    print(f"{len(sources)} definitions, {len(stale)} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
