#!/usr/bin/env python3
"""Seed corpora for the fuzz targets from the repository's own inputs.

    fuzz/seed.py <out>     writes <out>/<target>/<name> for every target

verify         every case of tests/conformance/*.yaml (the providers' SDK test cases)
request        every fixture of fixtures/ (the shipped pipelines' recorded requests)
request_fields fixture bodies with the shipped pipelines' JSON pointers and form fields
stored_entry   queue replies (RESP) and stored fields carrying the fixture payloads
yaml, pipeline the shipped pipelines, fixtures and conformance files
dotenv         env files naming the shipped env schema's variables

Inputs are written in the targets' format (fuzz/src/lib.rs): a first line, headers, an empty
line, the body. Needs Python 3 and PyYAML (Debian: python3-yaml).
"""
import json
import os
import sys
import urllib.parse

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files(d, ext):
    for base, _, names in os.walk(os.path.join(ROOT, d)):
        for n in sorted(names):
            if n.endswith(ext):
                yield os.path.join(base, n)


def request_text(first, headers, body):
    head = "".join(f"{k}: {v}\n" for k, v in headers.items())
    return f"{first}\n{head}\n".encode() + body


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def form(pairs):
    return urllib.parse.urlencode([(str(k), str(v)) for k, v in pairs]).encode()


def conformance(out):
    for path in files("tests/conformance", ".yaml"):
        doc = yaml.safe_load(open(path))
        d = doc.get("defaults") or {}
        for i, case in enumerate(doc["cases"]):
            get = lambda k: case.get(k, d.get(k))
            if case.get("body") is not None:
                body, is_form = case["body"].encode(), False
            elif case.get("form") is not None:
                body, is_form = form(case["form"]), True
            elif d.get("body") is not None:
                body, is_form = d["body"].encode(), False
            elif d.get("form") is not None:
                body, is_form = form(d["form"]), True
            else:
                body, is_form = b"", False
            headers = {}
            ct = get("content_type") or ("application/x-www-form-urlencoded" if is_form else None)
            if ct:
                headers["content-type"] = ct
            headers.update(get("headers") or {})
            first = f"{doc['provider']} {get('url')} {get('now') or 0}"
            write(out, "verify", f"{doc['provider']}-{i:03}", request_text(first, headers, body))


def fixture_body(path, body):
    if body is None:
        return b"", None
    if "json" in body:
        return json.dumps(body["json"], separators=(",", ":")).encode(), "application/json"
    if "text" in body:
        return body["text"].encode(), "text/plain"
    if "form" in body:
        pairs = []
        for k, v in body["form"].items():
            for one in v if isinstance(v, list) else [v]:
                pairs.append((k, one))
        return form(pairs), "application/x-www-form-urlencoded"
    if "file" in body:
        f = os.path.join(os.path.dirname(path), body["file"])
        ext = os.path.splitext(f)[1]
        ct = {".json": "application/json", ".form": "application/x-www-form-urlencoded",
              ".xml": "application/xml"}.get(ext, "application/octet-stream")
        return open(f, "rb").read(), ct
    return b"x" * min(int(body.get("size", 0)), 4096), "application/octet-stream"


# the shipped pipelines' request fields and map pointers (vapi.yaml, twilio-*.yaml)
POINTERS = "/message/type /message/call/id /message/call/orgId /message/toolCallList/0/id AccountSid CallSid MessageSid"


def fixtures(out):
    for path in files("fixtures", ".yaml"):
        doc = yaml.safe_load(open(path))
        req = doc["request"]
        body, ct = fixture_body(path, req.get("body"))
        headers = {}
        if ct:
            headers["content-type"] = ct
        for k, v in (req.get("headers") or {}).items():
            headers[k] = v[0] if isinstance(v, list) else v
        sign = " sign" if req.get("sign") else ""
        name = os.path.relpath(path, os.path.join(ROOT, "fixtures")).replace("/", "-")
        write(out, "request", name, request_text(f"{req.get('method', 'POST')} {req['path']}{sign}", headers, body))
        write(out, "request_fields", name, request_text(POINTERS, headers, body))
        # a stored entry: `e` (the event without its body) and `b` (the raw body)
        e = json.dumps({"id": "00000000-0000-4000-8000-000000000001", "pipeline": "vapi",
                        "received_at_ms": 1764086400000, "method": "POST", "path": req["path"],
                        "query": "", "headers": [["content-type", ct or "application/json"]],
                        "params": [], "tenant": None}).encode()
        write(out, "stored_entry", name + ".fields", e + b"\n" + body)
        entry = [b"e", e, b"b", body, b"a", b"1"]
        resp = b"*1\r\n*2\r\n$12\r\nengine:{q:v}\r\n*1\r\n*2\r\n$15\r\n1764086400000-0\r\n"
        resp += b"*%d\r\n" % len(entry) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in entry)
        write(out, "stored_entry", name + ".resp", resp)


def yaml_files(out):
    for d in ("pipelines", "fixtures", "tests/conformance"):
        for path in files(d, ".yaml"):
            name = os.path.relpath(path, ROOT).replace("/", "-")
            data = open(path, "rb").read()
            write(out, "yaml", name, data)
            if d == "pipelines" and not path.endswith(("env.schema.yaml", "engine.yaml")):
                write(out, "pipeline", name, data)


def dotenv(out):
    schema = yaml.safe_load(open(os.path.join(ROOT, "pipelines/env.schema.yaml")))
    names = list((schema.get("properties") or {}).keys())
    lines = [f"{n}=value-{i}" for i, n in enumerate(names)]
    write(out, "dotenv", "all", ("\n".join(lines) + "\n").encode())
    write(out, "dotenv", "quoted", b"export A=\"x\\ny\"\nB='single # not a comment'\n# comment\nC=plain value\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fuzz/corpus")
    conformance(out)
    fixtures(out)
    yaml_files(out)
    dotenv(out)


if __name__ == "__main__":
    main()
