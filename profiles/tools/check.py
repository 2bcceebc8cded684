#!/usr/bin/env python3
"""Check the conformance resources and examples in profiles/.

Usage:
    python3 profiles/tools/check.py BASE [--schema FILE]

BASE is the FHIR R4 4.0.1 package (tarball or directory), as for generate.py. The checks:

- every JSON file parses; file names match resourceType and id;
- the generated StructureDefinitions are up to date with profiles/src (generate.py --check);
- every StructureDefinition has a differential and a snapshot, every snapshot element an id, path, min and max,
  every differential element a short and a definition;
- every canonical used (binding valueSet, targetProfile, type profile, meta.profile, ValueSet include) resolves to a
  file in profiles/ or a definition in the R4 package (LOINC, SNOMED CT, RxNorm, UCUM, ICD-10-CM and CPT are
  external code systems);
- every code a ValueSet includes from the kap CodeSystem or an R4 CodeSystem exists there, with the same display;
- every example claims exactly one kap profile and satisfies its snapshot: cardinality, types of choice elements,
  fixed and pattern values, required bindings to value sets that enumerate their codes, reference target types,
  slices (by extension url or by pattern), extension definitions, and the kap-* invariants;
- every file validates against the R4 JSON Schema when the `jsonschema` package is installed (the schema's
  FHIRVersion enum lacks 4.0.1, so that one error on StructureDefinition.fhirVersion is ignored).

Exit code 0 when no problem is found, 1 otherwise. Python 3 standard library, plus `jsonschema` if present.
"""

import argparse
import glob
import json
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROFILES = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
import generate  # noqa: E402  (sibling module)

KAP_BASE = "http://kap-gateway.org/fhir/"
EXTERNAL_SYSTEMS = {
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://unitsofmeasure.org",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://www.ama-assn.org/go/cpt",
}

PRIMITIVE_SUFFIX = {
    "boolean", "integer", "string", "decimal", "uri", "url", "canonical", "base64Binary", "instant", "date",
    "dateTime", "time", "code", "oid", "id", "markdown", "unsignedInt", "positiveInt", "uuid",
}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")


def load_base_canonicals(location):
    """All canonical URLs of the conformance resources in the R4 package, and its CodeSystems and ValueSets."""
    urls, codesystems, valuesets = set(), {}, {}

    def take(name, read):
        if not name.endswith(".json"):
            return
        kind = name.split("-", 1)[0]
        if kind not in ("StructureDefinition", "ValueSet", "CodeSystem"):
            return
        res = json.loads(read())
        if "url" in res:
            urls.add(res["url"])
            if kind == "CodeSystem":
                codesystems[res["url"]] = res
            elif kind == "ValueSet":
                valuesets[res["url"]] = res

    if os.path.isfile(location):
        with tarfile.open(location, "r:*") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    name = os.path.basename(member.name)
                    take(name, lambda m=member: tar.extractfile(m).read())
    else:
        folder = os.path.join(location, "package") if os.path.isdir(os.path.join(location, "package")) else location
        for name in os.listdir(folder):
            take(name, lambda n=name: open(os.path.join(folder, n), "rb").read())
    return urls, codesystems, valuesets


def concepts_of(codesystem):
    out = {}

    def walk(concepts):
        for c in concepts:
            out[c["code"]] = c.get("display")
            walk(c.get("concept", []))

    walk(codesystem.get("concept", []))
    return out


def strip_version(url):
    return url.split("|", 1)[0]


def matches_pattern(value, pattern):
    """FHIR pattern semantics: every property of the pattern is present in the value with a matching value."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and matches_pattern(value[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(matches_pattern(v, p) for v in value) for p in pattern)
    return value == pattern


class ExampleValidator:
    def __init__(self, sds, valuesets, codesystems, examples, problems):
        self.sds = sds
        self.valuesets = valuesets
        self.codesystems = codesystems
        self.examples = examples
        self.problems = problems

    # ---- value set membership (value sets that enumerate codes or include a whole complete CodeSystem)
    def vs_codes(self, url):
        vs = self.valuesets.get(strip_version(url))
        if vs is None or "exclude" in vs.get("compose", {}):
            return None
        codes = set()
        for inc in vs.get("compose", {}).get("include", []):
            if "filter" in inc or "valueSet" in inc or "system" not in inc:
                return None
            if "concept" in inc:
                codes.update((inc["system"], c["code"]) for c in inc["concept"])
                continue
            cs = self.codesystems.get(inc["system"])
            if cs is None or cs.get("content") != "complete":
                return None
            codes.update((inc["system"], code) for code in concepts_of(cs))
        return codes

    def check_binding(self, where, value, type_code, binding):
        if binding.get("strength") != "required" or "valueSet" not in binding:
            return
        codes = self.vs_codes(binding["valueSet"])
        if codes is None:
            return
        if type_code == "CodeableConcept":
            codings = value.get("coding", [])
        elif type_code == "Coding":
            codings = [value]
        elif type_code == "code" and isinstance(value, str):
            if value not in {code for _, code in codes}:
                self.problems.add(where, f"code {value} is not in required value set {binding['valueSet']}")
            return
        else:
            return
        if not any((c.get("system"), c.get("code")) in codes for c in codings):
            self.problems.add(where, f"no coding from required value set {binding['valueSet']}")

    # ---- references
    def check_reference(self, where, value, type_def):
        targets = type_def.get("targetProfile", [])
        ref = value.get("reference")
        if not targets or not ref or ref.startswith("#") or ref.startswith("urn:"):
            return
        parts = ref.split("/")
        rtype = parts[0]
        allowed, kap_targets = set(), []
        for t in targets:
            if t.startswith(generate.CORE):
                allowed.add(t[len(generate.CORE):])
            elif t in self.sds:
                allowed.add(self.sds[t]["type"])
                kap_targets.append(t)
        if "Resource" not in allowed and rtype not in allowed:
            self.problems.add(where, f"reference {ref} is not to {sorted(allowed)}")
            return
        target = self.examples.get("/".join(parts[:2]))
        if target is not None and kap_targets:
            claimed = set(target.get("meta", {}).get("profile", []))
            if not claimed & set(kap_targets):
                self.problems.add(where, f"referenced example {ref} does not claim {kap_targets}")

    # ---- the element tree of a snapshot
    @staticmethod
    def tree(sd):
        children = {}
        for e in sd["snapshot"]["element"]:
            eid = e["id"]
            if "." not in eid:
                continue
            parent, name = eid.rsplit(".", 1)
            children.setdefault(parent, []).append((name, e))
        return children

    def values_of(self, node, name, eldef, where):
        """Values of the element `name` in node, each with the type it was given as (for choice elements)."""
        if name.endswith("[x]"):
            stem = name[:-3]
            allowed = {t["code"] for t in eldef.get("type", [])}
            found = []
            for key, val in node.items():
                if key.startswith(stem) and len(key) > len(stem) and key[len(stem)].isupper():
                    suffix = key[len(stem):]
                    tcode = suffix if suffix[0].lower() + suffix[1:] not in PRIMITIVE_SUFFIX else suffix[0].lower() + suffix[1:]
                    if tcode not in allowed:
                        self.problems.add(where, f"{key} is not allowed (types: {sorted(allowed)})")
                    found.append((val, tcode))
            return found
        val = node.get(name)
        if val is None:
            return []
        tcode = eldef["type"][0]["code"] if len(eldef.get("type", [])) == 1 else None
        vals = val if isinstance(val, list) else [val]
        return [(v, tcode) for v in vals]

    def slice_matches(self, value, slicing, slice_id, children):
        for disc in slicing.get("discriminator", []):
            sub = dict((n, e) for n, e in children.get(slice_id, []))
            if disc["type"] == "value" and disc["path"] == "url":
                root = next(e for e in self.all_elements if e["id"] == slice_id)
                profiles = [p for t in root.get("type", []) for p in t.get("profile", [])]
                fixed = sub.get("url", {}).get("fixedUri")
                if value.get("url") not in profiles + ([fixed] if fixed else []):
                    return False
            elif disc["type"] == "pattern":
                eldef = sub.get(disc["path"])
                pattern = next((v for k, v in (eldef or {}).items() if k.startswith("pattern")), None)
                if pattern is None or not matches_pattern(value.get(disc["path"]), pattern):
                    return False
            else:
                return False
        return True

    def validate_node(self, node, parent_id, children, where):
        groups = {}
        for name, eldef in children.get(parent_id, []):
            base_name, _, slice_name = name.partition(":")
            groups.setdefault(base_name, {"base": None, "slices": []})
            if slice_name:
                groups[base_name]["slices"].append((slice_name, eldef))
            else:
                groups[base_name]["base"] = eldef
        for name, group in groups.items():
            eldef = group["base"]
            values = self.values_of(node, name, eldef, where)
            count = len(values)
            if count < eldef.get("min", 0):
                self.problems.add(where, f"{eldef['id']}: {count} value(s), min {eldef['min']}")
            if eldef.get("max", "*") != "*" and count > int(eldef["max"]):
                self.problems.add(where, f"{eldef['id']}: {count} value(s), max {eldef['max']}")
            assigned = [[] for _ in values]
            if group["slices"] and "slicing" in eldef:
                for slice_name, sdef in group["slices"]:
                    hits = [i for i, (v, _) in enumerate(values)
                            if isinstance(v, dict) and self.slice_matches(v, eldef["slicing"], sdef["id"], children)]
                    if len(hits) < sdef.get("min", 0):
                        self.problems.add(where, f"{sdef['id']}: {len(hits)} value(s), min {sdef['min']}")
                    if sdef.get("max", "*") != "*" and len(hits) > int(sdef["max"]):
                        self.problems.add(where, f"{sdef['id']}: {len(hits)} value(s), max {sdef['max']}")
                    for i in hits:
                        assigned[i].append(sdef)
                if eldef["slicing"].get("rules") == "closed":
                    for i, a in enumerate(assigned):
                        if not a:
                            self.problems.add(where, f"{eldef['id']}[{i}] matches no slice of a closed slicing")
            for i, (value, tcode) in enumerate(values):
                for d in [eldef] + assigned[i]:
                    self.check_value(value, tcode, d, children, f"{where}.{name}[{i}]")

    def check_value(self, value, tcode, eldef, children, where):
        for key, expected in eldef.items():
            if key.startswith("fixed") and value != expected:
                self.problems.add(where, f"{eldef['id']}: value differs from {key} {expected}")
            if key.startswith("pattern") and not matches_pattern(value, expected):
                self.problems.add(where, f"{eldef['id']}: value does not match {key} {expected}")
        type_def = next((t for t in eldef.get("type", []) if t["code"] == tcode), None)
        if "binding" in eldef:
            self.check_binding(where, value, tcode, eldef["binding"])
        if tcode == "Reference" and type_def and isinstance(value, dict):
            self.check_reference(where, value, type_def)
        if tcode == "Extension" and type_def and type_def.get("profile") and isinstance(value, dict):
            ext_sd = self.sds.get(type_def["profile"][0])
            if ext_sd is not None and value.get("url") == ext_sd["url"]:
                self.validate_resource_like(value, ext_sd, where)
        if isinstance(value, dict):
            self.validate_node(value, eldef["id"], children, where)

    def validate_resource_like(self, node, sd, where):
        saved = getattr(self, "all_elements", None)
        self.all_elements = sd["snapshot"]["element"]
        root = sd["snapshot"]["element"][0]["id"]
        self.validate_node(node, root, self.tree(sd), where)
        self.all_elements = saved

    def validate(self, name, resource):
        claimed = [p for p in resource.get("meta", {}).get("profile", []) if p.startswith(KAP_BASE)]
        if len(claimed) != 1:
            self.problems.add(name, f"claims {len(claimed)} kap profiles, expected 1")
            return
        sd = self.sds.get(claimed[0])
        if sd is None:
            self.problems.add(name, f"profile {claimed[0]} not found")
            return
        if sd["type"] != resource["resourceType"]:
            self.problems.add(name, f"profile {sd['id']} is for {sd['type']}")
            return
        self.validate_resource_like(resource, sd, name)
        for element in sd["snapshot"]["element"]:
            for c in element.get("constraint", []):
                if c["key"].startswith("kap-"):
                    self.check_invariant(name, c["key"], element["path"], resource)

    def check_invariant(self, where, key, path, r):
        def has(labels, system, code):
            return any(l.get("system") == system and l.get("code") == code for l in labels)

        def value_present(node):
            return any(k.startswith("value") for k in node)

        ok = True
        if key == "kap-int-1":
            labels = r.get("meta", {}).get("security", [])
            ok = has(labels, "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R") and \
                has(labels, "http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY")
        elif key == "kap-vs-1":
            ok = value_present(r) or bool(r.get("component")) or "dataAbsentReason" in r
        elif key == "kap-vs-2":
            is_bp = any(c.get("system") == "http://loinc.org" and c.get("code") == "85354-9"
                        for c in r.get("code", {}).get("coding", []))
            ok = not is_bp or (bool(r.get("component")) and not value_present(r))
        elif key == "kap-dose-1":
            urls = {e.get("url") for e in r.get("dosage", {}).get("extension", [])}
            ok = KAP_BASE + "StructureDefinition/kap-dose-per-kg" not in urls or \
                KAP_BASE + "StructureDefinition/kap-body-weight-used" in urls
        else:
            self.problems.add(where, f"invariant {key} has no check in check.py")
            return
        if not ok:
            self.problems.add(where, f"invariant {key} failed")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check the kap-gateway conformance resources and examples.")
    parser.add_argument("base", help="hl7.fhir.r4.core 4.0.1 package: tarball or unpacked directory")
    parser.add_argument("--schema", default=os.path.join(os.path.dirname(PROFILES), "schemas", "fhir.schema.json"))
    args = parser.parse_args(argv)
    problems = Problems()

    # 1. parse
    files = sorted(glob.glob(os.path.join(PROFILES, "*.json")) + glob.glob(os.path.join(PROFILES, "examples", "*.json"))
                   + glob.glob(os.path.join(PROFILES, "src", "*.json")))
    docs = {}
    for path in files:
        rel = os.path.relpath(path, PROFILES)
        try:
            with open(path, encoding="utf-8") as f:
                docs[rel] = json.load(f)
        except ValueError as err:
            problems.add(rel, f"invalid JSON: {err}")
    for rel, res in docs.items():
        if rel.startswith("src/"):
            continue
        expected = f"{res.get('resourceType')}-{res.get('id')}.json"
        if os.path.basename(rel) != expected:
            problems.add(rel, f"file name should be {expected}")

    # 2. snapshots up to date
    if generate.main([args.base, "--check"]) != 0:
        problems.add("src", "generated StructureDefinitions are stale or could not be generated: run tools/generate.py")

    conformance = {rel: r for rel, r in docs.items() if "/" not in rel}
    sds = {r["url"]: r for r in conformance.values() if r.get("resourceType") == "StructureDefinition"}
    valuesets = {r["url"]: r for r in conformance.values() if r.get("resourceType") == "ValueSet"}
    codesystems = {r["url"]: r for r in conformance.values() if r.get("resourceType") == "CodeSystem"}
    examples = {f"{r['resourceType']}/{r['id']}": r for rel, r in docs.items() if rel.startswith("examples/")}
    base_urls, base_codesystems, base_valuesets = load_base_canonicals(args.base)
    known = set(sds) | set(valuesets) | set(codesystems) | base_urls

    # 3. StructureDefinitions
    for rel, sd in conformance.items():
        if sd.get("resourceType") != "StructureDefinition":
            continue
        if sd.get("url") != f"{KAP_BASE}StructureDefinition/{sd.get('id')}":
            problems.add(rel, "url is not the kap canonical of its id")
        expected_kind = "complex-type" if sd.get("type") == "Extension" else "resource"
        if sd.get("kind") != expected_kind or sd.get("derivation") != "constraint":
            problems.add(rel, "kind or derivation is wrong")
        if sd.get("baseDefinition") != generate.CORE + sd.get("type", ""):
            problems.add(rel, "baseDefinition is not the R4 core type")
        for part in ("differential", "snapshot"):
            if not sd.get(part, {}).get("element"):
                problems.add(rel, f"no {part}")
        for e in sd.get("snapshot", {}).get("element", []):
            for key in ("id", "path", "min", "max"):
                if key not in e:
                    problems.add(rel, f"snapshot element {e.get('id')} has no {key}")
        snap_ids = {e.get("id") for e in sd.get("snapshot", {}).get("element", [])}
        for e in sd.get("differential", {}).get("element", []):
            if e.get("id") not in snap_ids:
                problems.add(rel, f"differential element {e.get('id')} is not in the snapshot")
            if not e.get("short") or not e.get("definition"):
                problems.add(rel, f"differential element {e.get('id')} needs a short and a definition")
        for part in ("differential", "snapshot"):
            for e in sd.get(part, {}).get("element", []):
                canon = []
                if "binding" in e and "valueSet" in e["binding"]:
                    canon.append(e["binding"]["valueSet"])
                for t in e.get("type", []):
                    canon += t.get("targetProfile", []) + t.get("profile", [])
                for c in canon:
                    if strip_version(c) not in known:
                        if part == "differential" or c.startswith(KAP_BASE):
                            problems.add(rel, f"{e['id']}: unresolved canonical {c}")

    # 4. ValueSets and the CodeSystem
    for rel, vs in conformance.items():
        if vs.get("resourceType") != "ValueSet":
            continue
        if vs.get("url") != f"{KAP_BASE}ValueSet/{vs.get('id')}":
            problems.add(rel, "url is not the kap canonical of its id")
        for inc in vs.get("compose", {}).get("include", []):
            for ref in inc.get("valueSet", []):
                if strip_version(ref) not in known:
                    problems.add(rel, f"unresolved value set {ref}")
            system = inc.get("system")
            if system is None:
                continue
            cs = codesystems.get(system) or base_codesystems.get(system)
            if cs is not None and cs.get("content") != "complete":
                cs = None  # a stub such as SNOMED CT's: the codes are not in the package
            if cs is None:
                if system not in EXTERNAL_SYSTEMS:
                    problems.add(rel, f"unknown code system {system}")
                continue
            defined = concepts_of(cs)
            for c in inc.get("concept", []):
                if c["code"] not in defined:
                    problems.add(rel, f"{system}#{c['code']} is not defined")
                elif c.get("display") and defined[c["code"]] and c["display"] != defined[c["code"]]:
                    problems.add(rel, f"{system}#{c['code']} display '{c['display']}' differs from '{defined[c['code']]}'")
    for rel, cs in conformance.items():
        if cs.get("resourceType") == "CodeSystem":
            n = len(concepts_of(cs))
            if cs.get("count") != n or len(cs.get("concept", [])) == 0:
                problems.add(rel, f"count {cs.get('count')} but {n} concepts")

            def walk(concepts):
                for c in concepts:
                    if not c.get("display") or not c.get("definition"):
                        problems.add(rel, f"concept {c.get('code')} needs a display and a definition")
                    walk(c.get("concept", []))

            walk(cs.get("concept", []))

    # 5. examples
    validator = ExampleValidator(sds, {**base_valuesets, **valuesets}, {**base_codesystems, **codesystems},
                                 examples, problems)
    covered = set()
    for rel, res in docs.items():
        if not rel.startswith("examples/"):
            continue
        claimed = res.get("meta", {}).get("profile", [])
        if not claimed and res["resourceType"] == "Practitioner":
            continue  # supporting resource, no kap profile
        for p in claimed:
            if strip_version(p) not in known:
                problems.add(rel, f"unresolved meta.profile {p}")
            covered.add(p)
        validator.validate(rel, res)
    for url, sd in sds.items():
        if sd["type"] != "Extension" and url not in covered:
            problems.add(sd["id"], "no example claims this profile")

    # codes of the kap CodeSystem used anywhere in the examples must exist
    kap_codes = concepts_of(codesystems.get(KAP_BASE + "CodeSystem/kap", {}))

    def scan(node, where):
        if isinstance(node, dict):
            if node.get("system") == KAP_BASE + "CodeSystem/kap" and "code" in node:
                if node["code"] not in kap_codes:
                    problems.add(where, f"kap code {node['code']} is not defined")
                elif node.get("display") and node["display"] != kap_codes[node["code"]]:
                    problems.add(where, f"kap code {node['code']} display differs from the CodeSystem")
            for v in node.values():
                scan(v, where)
        elif isinstance(node, list):
            for v in node:
                scan(v, where)

    for rel, res in docs.items():
        if rel.startswith("examples/") or rel.startswith("src/") or res.get("resourceType") == "StructureDefinition":
            scan(res, rel)

    # 6. JSON Schema
    schema_note = ""
    try:
        import jsonschema
    except ImportError:
        schema_note = " (JSON Schema skipped: jsonschema not installed)"
    else:
        with open(args.schema, encoding="utf-8") as f:
            schema = json.load(f)
        validator_cls = jsonschema.validators.validator_for(schema)
        per_type = {}
        for rel, res in docs.items():
            rtype = res.get("resourceType")
            if rtype not in schema.get("definitions", {}):
                problems.add(rel, f"JSON Schema: unknown resourceType {rtype}")
                continue
            if rtype not in per_type:
                # Validate against the resource's own definition, so errors are not buried in the root oneOf.
                sub = {k: v for k, v in schema.items() if k not in ("oneOf", "discriminator", "$ref")}
                sub["$ref"] = f"#/definitions/{rtype}"
                per_type[rtype] = validator_cls(sub)
            for err in per_type[rtype].iter_errors(res):
                if list(err.absolute_path) == ["fhirVersion"] and err.instance == "4.0.1":
                    continue
                best = jsonschema.exceptions.best_match([err])
                problems.add(rel, f"JSON Schema: {'/'.join(map(str, best.absolute_path))}: {best.message[:200]}")

    for p in problems.items:
        print(p)
    print(f"checked {len(docs)} files: {len(problems.items)} problem(s){schema_note}")
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())
