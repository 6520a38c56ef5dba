"""The REST API (issue 16) against its OpenAPI document, docs/openapi.json, on a real
cluster: fschedctld serving RestPort with JWT authentication, real jobs of an
unprivileged user, real checkpoints.

- The document itself: OpenAPI 3.1 structure (checked with a meta-schema of its own, as
  far as python3-jsonschema can), every schema a valid JSON Schema 2020-12, every $ref
  resolvable, path parameters declared, and it is what GET /openapi.json serves.
- Every documented route answers (not 404), every other method on its path is a 405,
  and the routes the controller's source registers are the documented ones (less the
  node-facing /v1/nodes/register|heartbeat|job_ended|op_done, which are not on the REST
  port and answer 404 there).
- Each route exercised as the job's owner, as another user and as root: every reply's
  status must be one the document lists for that route, and its body must validate
  against the documented schema (reply schemas have additionalProperties: false, so an
  undocumented field fails). Numbers are parsed as Decimal for the check, so a field
  documented integer that the server writes as 1.0 fails.
- Bad JSON (400), unknown ids (404), wrong methods (405), and every way a token can be
  wrong (401): missing, malformed, forged signature, alg none, another algorithm,
  expired, no expiry, a user that does not exist; another user's action (403); everyone
  reads (200)."""
from __future__ import annotations

import base64
import collections
import decimal
import hashlib
import hmac
import http.client
import json
import os
import pwd
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest

from ckpt_e2e import E2E
from sched_e2e import REPO, Cluster

DOC_PATH = REPO / "docs/openapi.json"
OTHER_USER = "fschedtest2"
# The controller's node-facing routes: on its MUNGE port only.
NODE_FACING = [("POST", "/v1/nodes/register"), ("POST", "/v1/nodes/heartbeat"),
               ("POST", "/v1/nodes/job_ended"), ("POST", "/v1/nodes/op_done")]
# The MUNGE port's routes that are not on the REST port: the node-facing ones, and
# `scontrol token`'s (a token is had by proving who one is with MUNGE).
MUNGE_ONLY = NODE_FACING + [("POST", "/v1/token")]
# The document itself, served without a token (not a route of the API's server table).
DOC_URLS = ("/openapi.json", "/openapi/v3")
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]
# (method, path template) -> statuses seen, over the whole module (coverage check at the end).
SEEN: dict[tuple[str, str], set[int]] = collections.defaultdict(set)

# A job that runs until stopped (at most 2 minutes), checkpointable: one python3 process.
JOB_SCRIPT = """#!/bin/bash
exec python3 -u -c '
import time
for i in range(600):
    print("tick", i, flush=True)
    time.sleep(0.2)
'
"""


# ------------------------------------------------------------------ the document

def load_doc() -> dict:
    return json.loads(DOC_PATH.read_text())


# A meta-schema of OpenAPI 3.1's structure, as much of it as this document uses and a
# validator of JSON Schema can check (the spec's own schema needs $dynamicRef support
# that Debian 12's python3-jsonschema 4.10 does not have in full).
_REF = {"type": "object", "required": ["$ref"], "properties": {"$ref": {"type": "string", "pattern": "^#/components/"}}}
OPENAPI_31_STRUCTURE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["openapi", "info", "paths"],
    "properties": {
        "openapi": {"type": "string", "pattern": r"^3\.1\.\d+$"},
        "jsonSchemaDialect": {"type": "string"},
        "info": {"type": "object", "required": ["title", "version"],
                 "properties": {"title": {"type": "string"}, "version": {"type": "string"},
                                "description": {"type": "string"}, "summary": {"type": "string"},
                                "license": {"type": "object", "required": ["name"]}}},
        "servers": {"type": "array", "items": {"$ref": "#/$defs/server"}},
        "security": {"$ref": "#/$defs/security"},
        "tags": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "paths": {"type": "object", "propertyNames": {"pattern": "^/"},
                  "additionalProperties": {"$ref": "#/$defs/pathItem"}},
        "components": {"type": "object", "properties": {
            "schemas": {"type": "object", "additionalProperties": {"type": ["object", "boolean"]}},
            "responses": {"type": "object", "additionalProperties": {"$ref": "#/$defs/response"}},
            "securitySchemes": {"type": "object", "additionalProperties": {"$ref": "#/$defs/securityScheme"}},
        }},
    },
    "patternProperties": {"^x-": True},
    "additionalProperties": False,
    "$defs": {
        "server": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string"}, "description": {"type": "string"},
            "variables": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["default"], "properties": {"default": {"type": "string"}}}}},
            "additionalProperties": False},
        "security": {"type": "array", "items": {"type": "object", "additionalProperties": {
            "type": "array", "items": {"type": "string"}}}},
        "pathItem": {"type": "object", "propertyNames": {"enum": [
            "summary", "description", "servers", "parameters",
            "get", "put", "post", "delete", "options", "head", "patch", "trace"]},
            "additionalProperties": {"$ref": "#/$defs/operation"},
            "properties": {"summary": {"type": "string"}, "description": {"type": "string"},
                           "parameters": {"type": "array", "items": {"$ref": "#/$defs/parameter"}}}},
        "operation": {"type": "object", "required": ["responses"], "properties": {
            "operationId": {"type": "string"}, "summary": {"type": "string"}, "description": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "parameters": {"type": "array", "items": {"$ref": "#/$defs/parameter"}},
            "requestBody": {"type": "object", "required": ["content"], "properties": {
                "required": {"type": "boolean"}, "description": {"type": "string"},
                "content": {"$ref": "#/$defs/content"}}, "additionalProperties": False},
            "responses": {"type": "object", "minProperties": 1,
                          "propertyNames": {"pattern": "^([1-5][0-9X][0-9X]|default)$"},
                          "additionalProperties": {"$ref": "#/$defs/response"}},
            "security": {"$ref": "#/$defs/security"}},
            "additionalProperties": False},
        "parameter": {"type": "object", "required": ["name", "in", "schema"], "properties": {
            "name": {"type": "string"}, "in": {"enum": ["path", "query", "header", "cookie"]},
            "required": {"type": "boolean"}, "description": {"type": "string"},
            "schema": {"type": "object"}},
            "if": {"properties": {"in": {"const": "path"}}},
            "then": {"required": ["required"], "properties": {"required": {"const": True}}},
            "additionalProperties": False},
        "content": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["schema"], "properties": {"schema": {"type": ["object", "boolean"]}}}},
        "response": {"oneOf": [_REF, {"type": "object", "required": ["description"], "properties": {
            "description": {"type": "string"}, "content": {"$ref": "#/$defs/content"},
            "headers": {"type": "object"}}, "additionalProperties": False}]},
        "securityScheme": {"type": "object", "required": ["type"], "oneOf": [
            {"properties": {"type": {"const": "apiKey"}, "in": {"enum": ["query", "header", "cookie"]},
                            "name": {"type": "string"}}, "required": ["type", "in", "name"]},
            {"properties": {"type": {"const": "http"}, "scheme": {"type": "string"}}, "required": ["type", "scheme"]},
        ]},
    },
}


def _resolver(doc: dict):
    return jsonschema.RefResolver(base_uri="", referrer=doc)


def _walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for n, v in enumerate(node):
            yield from _walk(v, f"{path}/{n}")


def _deref(doc: dict, node: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node and len(node) == 1:
        node = _resolver(doc).resolve(node["$ref"])[1]
    return node


def operations(doc: dict):
    """(METHOD, template, operation) of every documented operation."""
    for template, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "options", "head", "trace"):
                yield method.upper(), template, op


def test_document_structure():
    doc = load_doc()
    jsonschema.Draft202012Validator.check_schema(OPENAPI_31_STRUCTURE)
    errors = sorted(jsonschema.Draft202012Validator(OPENAPI_31_STRUCTURE).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:20])
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "fsched REST API"
    schemes = doc["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-SLURM-USER-TOKEN"}.items() <= \
        next(s for s in schemes.values() if s["type"] == "apiKey").items()
    bearer = next(s for s in schemes.values() if s["type"] == "http")
    assert bearer["scheme"] == "bearer" and bearer.get("bearerFormat") == "JWT"
    assert all(name in schemes for req in doc["security"] for name in req)

    # Every $ref resolves; every schema is a valid JSON Schema 2020-12.
    resolver = _resolver(doc)
    for where, node in _walk(doc):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            resolver.resolve(node["$ref"])  # raises RefResolutionError
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    ids = []
    for method, template, op in operations(doc):
        ids.append(op["operationId"])
        # Path parameters: exactly the template's, each declared required.
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", template)), (method, template)
        for p in op.get("parameters", []):
            jsonschema.Draft202012Validator.check_schema(p["schema"])
        for media in (op.get("requestBody", {}).get("content") or {}).values():
            jsonschema.Draft202012Validator.check_schema(media["schema"])
        for status, r in op["responses"].items():
            r = _deref(doc, r)
            schema = r["content"]["application/json"]["schema"]
            jsonschema.Draft202012Validator.check_schema(schema)
            if status != "200":
                assert _deref(doc, schema) == doc["components"]["schemas"]["Error"], (method, template, status)
        secured = op.get("security", doc["security"]) != []
        assert ("401" in op["responses"]) == secured, f"{method} {template}: 401 iff a token is needed"
    assert len(ids) == len(set(ids)), "operationIds must be unique"

    # Reply schemas are closed: a field the server adds without documenting it fails.
    for name in ("Job", "Checkpoint", "Node", "Partition", "Error", "LastCheckpoint", "JobList",
                 "CheckpointList", "NodeList", "PartitionList", "SubmitReply", "Ping", "WhoAmI",
                 "CheckpointStats", "Empty", "DrainBlocked"):
        assert doc["components"]["schemas"][name].get("additionalProperties") is False, name
    # Units are said: every time, duration and size field's description names its unit.
    for name in ("Job", "Checkpoint", "Node", "Partition"):
        for field, s in doc["components"]["schemas"][name]["properties"].items():
            if re.search(r"time|duration|size|memory|_ms$|mem_mb|interval|heartbeat", field) and field != "last_checkpoint":
                assert re.search(r"unix seconds|seconds|bytes|mib|milliseconds", s.get("description", "").lower()), \
                    f"{name}.{field}: say its unit"


def test_document_validates_examples_from_the_docs():
    """The JSON shown in docs/scheduler.md (plus the fields the text adds) fits the schemas."""
    doc = load_doc()
    job = {"job_id": 12, "name": "test", "user": "alice", "uid": 1000, "gid": 1000,
           "partition": "debug", "state": "RUNNING", "reason": "None",
           "submit_time": 1763700000, "start_time": 1763700001, "end_time": 0,
           "run_time": 135, "time_limit": 0, "nodes": "node1", "num_nodes": 1,
           "cpus_per_task": 1, "ntasks": 1, "num_cpus": 1, "mem_mb": 0,
           "work_dir": "/home/alice", "stdout": "/home/alice/slurm-12.out", "stderr": "/home/alice/slurm-12.out",
           "command": "/var/spool/fschedd/job12/slurm_script", "argv": [],
           "checkpoint_interval": 300, "checkpoint_dir": "/var/lib/fsched/checkpoint/12",
           "requeue": True, "hold": False, "restarts": 0, "job_version": 1,
           "exit_code": "0:0", "last_checkpoint": {"checkpoint_id": 3, "time": 1763700300.5, "status": "Present"},
           "restore_from": 0, "generation": 1, "history": [], "suspended_in_place": False,
           "suspended_by": 0, "num_retained": 0}
    validate(doc, {"$ref": "#/components/schemas/Job"}, job)
    validate(doc, {"$ref": "#/components/schemas/Job"}, {**job, "last_checkpoint": None})
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, {"$ref": "#/components/schemas/Job"}, {**job, "undocumented": 1})
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, {"$ref": "#/components/schemas/Job"}, {**job, "uid": 1000.5})
    validate(doc, {"$ref": "#/components/schemas/Checkpoint"},
             {"checkpoint_id": 3, "job_id": 12, "description": "periodic",
              "trigger_time": 1763700300.1, "completion_time": 1763700300.9, "duration": 0.8,
              "status": "Present", "reason": "", "source": "periodic", "job_version": 1,
              "location": "/var/lib/fsched/checkpoint/12/3", "size": 123456, "freeze_ms": 41.6,
              "kind": "incremental", "parent_id": 2, "chain_size": 2345678, "generation": 1})
    validate(doc, {"$ref": "#/components/schemas/Partition"},
             {"name": "debug", "nodes": ["node1", "node2"], "default": True, "state": "UP",
              "max_time": 0, "total_cpus": 4, "total_nodes": 2})


def validate(doc: dict, schema: dict, instance):
    jsonschema.Draft202012Validator(schema, resolver=_resolver(doc)).validate(instance)


# ------------------------------------------------------------------ HTTP

class Reply:
    def __init__(self, status: int, text: str):
        self.status = status
        self.text = text
        try:
            self.json = json.loads(text)
            # For the schema check: a JSON number with a fraction or an exponent is a
            # Decimal, which JSON Schema's "integer" refuses (Python's 1.0 it accepts).
            self.strict = json.loads(text, parse_float=decimal.Decimal)
        except ValueError:
            self.json = self.strict = None

    def __repr__(self):
        return f"HTTP {self.status} {self.text[:500]}"


class Api:
    """Requests to the REST port, one per connection (urllib sends Connection: close),
    each reply checked against the document."""

    def __init__(self, base: str, doc: dict):
        self.base = base
        self.doc = doc

    def raw(self, method: str, path: str, token: str | None = None, body: bytes | None = None,
            headers: dict | None = None, bearer: bool = False) -> Reply:
        h = dict(headers or {})
        if token is not None:
            if bearer:
                h["Authorization"] = f"Bearer {token}"
            else:
                h["X-SLURM-USER-TOKEN"] = token
        if body is not None:
            h.setdefault("Content-Type", "application/json")
        elif method in ("POST", "PUT", "PATCH", "DELETE"):
            body = b""  # Content-Length: 0
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return Reply(r.status, r.read().decode())
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.read().decode(errors="replace"))

    def operation(self, method: str, template: str) -> dict:
        assert template in self.doc["paths"], f"{template} is not documented"
        op = self.doc["paths"][template].get(method.lower())
        assert op is not None, f"{method} {template} is not documented"
        return op

    def check(self, method: str, template: str, r: Reply):
        """The reply's status is documented for the route and its body fits the schema."""
        op = self.operation(method, template)
        SEEN[(method, template)].add(r.status)
        assert str(r.status) in op["responses"], \
            f"{method} {template}: status {r.status} is not documented ({sorted(op['responses'])}): {r}"
        resp = _deref(self.doc, op["responses"][str(r.status)])
        schema = resp["content"]["application/json"]["schema"]
        assert r.strict is not None, f"{method} {template}: the reply is not JSON: {r}"
        try:
            validate(self.doc, schema, r.strict)
        except jsonschema.ValidationError as e:
            raise AssertionError(f"{method} {template} -> {r.status}: the body does not fit the document: "
                                 f"{'/'.join(map(str, e.absolute_path))}: {e.message}\n{r.text[:3000]}") from None

    def call(self, method: str, template: str, token: str | None, expect: int, body=None,
             raw_body: bytes | None = None, bearer: bool = False, **params):
        """Sends method template (formatted with params) and returns the reply's JSON,
        after checking its status is `expect` and is documented, and its body fits. A
        dict body must fit the documented request schema unless expect is 400."""
        template, _, query = template.partition("?")
        path = template.format(**params) + (f"?{query}" if query else "")
        if body is not None:
            op = self.operation(method, template)
            if expect != 400:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                validate(self.doc, schema, body)
            raw_body = json.dumps(body).encode()
        r = self.raw(method, path, token, raw_body, bearer=bearer)
        self.check(method, template, r)
        assert r.status == expect, f"{method} {path}: expected {expect}, got {r}"
        return r.json


def raw_http(base: str, method: str, path: str, token: str, headers: dict, body: bytes | None) -> tuple[int, str]:
    """A request as written here, headers and all (no Content-Length unless given)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest(method, path)
        conn.putheader("X-SLURM-USER-TOKEN", token)
        conn.putheader("Connection", "close")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


# ------------------------------------------------------------------ JWT

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_parts(token: str) -> tuple[dict, dict]:
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


def make_jwt(header: dict, payload: dict, key: bytes | None, alg=hashlib.sha256) -> str:
    signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    sig = b64url(hmac.new(key, signing.encode(), alg).digest()) if key is not None else ""
    return f"{signing}.{sig}"


# ------------------------------------------------------------------ fixtures

def ensure_user(name: str) -> str:
    if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
        r = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                            "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 and subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
            pytest.fail(f"useradd {name}: {r.stderr.strip()}", pytrace=False)
    return name


@pytest.fixture(scope="module")
def cluster(e2e: E2E, build_dir):
    # A WebRoot of this test's own holding only the document as it is in docs/ (the
    # console's build is tests/web's concern; test_served_document checks build/web's copy).
    web = e2e.jobs_dir.parent / "rest-web"
    web.mkdir(parents=True, exist_ok=True)
    (web / "openapi.json").write_bytes(DOC_PATH.read_bytes())
    for p in (web, web / "openapi.json"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    c = Cluster(build_dir, e2e.jobs_dir.parent / "rest-cluster", nodes=2, cpus=2,
                WebRoot=web, AuthAltTypes="auth/jwt").start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def api(cluster) -> Api:
    a = Api(cluster.rest_url, load_doc())
    cluster.wait_for(lambda: _answers(a), 20, "the REST port to answer")
    return a


def _answers(a: Api) -> bool:
    try:
        return a.raw("GET", "/openapi.json").status in (200, 404)
    except OSError:
        return False


class Tokens:
    def __init__(self, c: Cluster, owner: str, other: str):
        self.owner_name, self.other_name = owner, other
        self.owner = c.token(user=owner)
        self.other = c.token(user=other)
        self.root = c.token()


@pytest.fixture(scope="module")
def tokens(cluster, test_user) -> Tokens:
    return Tokens(cluster, test_user, ensure_user(OTHER_USER))


@pytest.fixture(scope="module")
def workdir(e2e: E2E, test_user) -> Path:
    d = e2e.jobs_dir.parent / "rest-work"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d.parent, 0o755)
    pw = pwd.getpwnam(test_user)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


def submit_body(workdir: Path, **kw) -> dict:
    body = {"script": JOB_SCRIPT, "argv": [], "env": {"PATH": "/usr/bin:/bin"}, "name": "restjob",
            "work_dir": str(workdir), "stdout": str(workdir / "slurm-%j.out"), "stderr": "",
            "partition": "", "cpus_per_task": 1, "ntasks": 1, "mem_mb": 0, "time_limit": 0,
            "checkpoint_interval": 3600, "requeue": True, "hold": False}
    body.update(kw)
    return body


def wait_job(api: Api, token: str, jid: int, states, timeout=60) -> dict:
    states = {states} if isinstance(states, str) else set(states)
    last = {}

    def done():
        nonlocal last
        last = api.call("GET", "/v1/jobs/{job_id}", token, 200, job_id=jid)
        return last if last["state"] in states else None
    try:
        return Cluster.wait_for(done, timeout, f"job {jid} to be {states}", interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen {last.get('state')} ({last.get('reason')})") from None


# ------------------------------------------------------------------ tests

def test_served_document_is_docs_openapi_json(api: Api, build_dir):
    built = build_dir / "web/openapi.json"
    if built.parent.is_dir():
        assert built.exists() and json.loads(built.read_text()) == load_doc(), \
            f"{built} is not docs/openapi.json: run scripts/build-web.sh"
    for url in DOC_URLS:
        r = api.raw("GET", url)  # no token
        api.check("GET", url, r)
        assert r.status == 200, r
        assert r.json == load_doc(), f"GET {url} must serve docs/openapi.json (run scripts/build-web.sh?)"
        r = api.raw("POST", url, body=b"{}")
        assert r.status == 405, r


def test_whoami_ping_nodes_partitions(api: Api, tokens: Tokens, cluster: Cluster):
    for name, tok, root in ((tokens.owner_name, tokens.owner, False), (tokens.other_name, tokens.other, False),
                            ("root", tokens.root, True)):
        me = api.call("GET", "/v1/whoami", tok, 200)
        assert me == {"user": name, "uid": pwd.getpwnam(name).pw_uid, "root": root}, me
        # Authorization: Bearer works as well as X-SLURM-USER-TOKEN.
        assert api.call("GET", "/v1/whoami", tok, 200, bearer=True) == me
    ping = api.call("GET", "/v1/ping", tokens.other, 200)
    assert ping["cluster"] == "e2e" and abs(float(ping["time"]) - time.time()) < 30, ping
    nodes = api.call("GET", "/v1/nodes", tokens.other, 200)["nodes"]
    assert sorted(n["name"] for n in nodes) == ["node1", "node2"], nodes
    assert all(n["state"] in ("IDLE", "MIXED", "ALLOCATED") and n["cpus"] == 2 and n["partitions"] == ["debug"]
               for n in nodes), nodes
    parts = api.call("GET", "/v1/partitions", tokens.owner, 200)["partitions"]
    assert parts == [{"name": "debug", "nodes": ["node1", "node2"], "default": True, "state": "UP",
                      "max_time": 0, "total_cpus": 4, "total_nodes": 2}], parts
    # The same as the MUNGE API's view (sinfo --json), less what changes with time.
    live = {"load", "cpu_util", "io_wait", "mem_util", "free_memory", "last_heartbeat", "alloc_cpus",
            "alloc_memory", "state"}
    strip = lambda ns: sorted(({k: v for k, v in n.items() if k not in live} for n in ns), key=lambda n: n["name"])
    assert strip(nodes) == strip(cluster.node_list())
    stats = api.call("GET", "/v1/checkpoints/stats", tokens.other, 200)["hours"]
    hours = [h["hour"] for h in stats]
    assert hours == sorted(hours) and all(b - a == 3600 for a, b in zip(hours, hours[1:])), hours
    assert hours[-1] == int(time.time()) // 3600 * 3600 or hours[-1] == (int(time.time()) // 3600 - 1) * 3600


def test_job_lifecycle_as_owner_other_and_root(api: Api, tokens: Tokens, cluster: Cluster, workdir: Path):
    own, oth, root = tokens.owner, tokens.other, tokens.root
    J, A = "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/"
    jid = api.call("POST", "/v1/jobs", own, 200, body=submit_body(workdir))["job_id"]
    job = wait_job(api, own, jid, "RUNNING")
    pw = pwd.getpwnam(tokens.owner_name)
    assert (job["user"], job["uid"], job["gid"]) == (tokens.owner_name, pw.pw_uid, pw.pw_gid), job
    assert job["name"] == "restjob" and job["stdout"] == str(workdir / f"slurm-{jid}.out") == job["stderr"], job
    assert job["checkpoint_interval"] == 3600 and job["last_checkpoint"] is None, job
    # Everyone reads: another user and root see the job, alone and in the list.
    for tok in (oth, root):
        assert api.call("GET", J, tok, 200, job_id=jid)["job_id"] == jid
        assert jid in [j["job_id"] for j in api.call("GET", "/v1/jobs", tok, 200)["jobs"]]
    assert [j["job_id"] for j in api.call("GET", "/v1/jobs?state=RUNNING,PENDING", oth, 200)["jobs"]] == [jid]
    assert api.call("GET", "/v1/jobs?state=COMPLETED", oth, 200)["jobs"] == []
    api.call("GET", "/v1/jobs?state=NOSUCHSTATE", oth, 400)
    # The same job as the MUNGE API's (squeue --json), less what changes with time.
    strip = lambda j: {k: v for k, v in j.items() if k != "run_time"}
    assert strip(api.call("GET", J, own, 200, job_id=jid)) == strip(cluster.job(jid))

    # Another user may act on nothing of it.
    for action, body in (("signal", {"signal": 18}), ("cancel", {}), ("hold", {}), ("release", {}),
                         ("requeue", {}), ("checkpoint", {"description": "not mine"}), ("vacate", {}),
                         ("restart", {}), ("suspend", {}), ("suspend", {"in_place": True}), ("resume", {}),
                         ("update", {"num_retained": 1})):
        e = api.call("POST", A + action, oth, 403, body=body, job_id=jid)
        assert "denied" in e["error"].lower() or tokens.owner_name in e["error"], e
    api.call("DELETE", A + "checkpoints/{checkpoint_id}", oth, 403, job_id=jid, checkpoint_id=1)
    api.call("POST", "/v1/nodes/{name}/update", own, 403, body={"state": "DRAIN", "reason": "x"}, name=job["nodes"])
    assert api.call("GET", J, own, 200, job_id=jid)["state"] == "RUNNING"

    # Checkpoints, made by the owner.
    c1 = api.call("POST", A + "checkpoint", own, 200, body={"description": "first"}, job_id=jid)
    assert (c1["status"], c1["source"], c1["description"], c1["job_id"]) == ("Present", "manual", "first", jid), c1
    assert c1["size"] > 0 and c1["location"] == str(cluster.ckpt_dir / str(jid) / str(c1["checkpoint_id"])), c1
    c2 = api.call("POST", A + "checkpoint", own, 200, body={}, job_id=jid)
    assert c2["status"] == "Present" and c2["checkpoint_id"] > c1["checkpoint_id"], c2
    listed = api.call("GET", A + "checkpoints", oth, 200, job_id=jid)["checkpoints"]
    assert [x["checkpoint_id"] for x in listed] == [c1["checkpoint_id"], c2["checkpoint_id"]], listed
    assert listed == cluster.checkpoints(jid)
    job = api.call("GET", J, oth, 200, job_id=jid)
    assert job["last_checkpoint"] == {"checkpoint_id": c2["checkpoint_id"], "time": c2["trigger_time"],
                                      "status": "Present"}, job

    # Retained checkpoints per job (0 = the cluster's CRIU_MaxEpochs).
    assert api.call("GET", J, own, 200, job_id=jid)["num_retained"] == 0
    api.call("POST", A + "update", own, 400, body={"num_retained": -1}, job_id=jid)
    api.call("POST", A + "update", own, 400, body={"num_retained": "two"}, job_id=jid)
    assert api.call("POST", A + "update", root, 200, body={"num_retained": 3}, job_id=jid)["num_retained"] == 3
    job = api.call("POST", A + "update", own, 200, body={"num_retained": 2}, job_id=jid)
    assert job["num_retained"] == 2 and job["job_id"] == jid, job
    c3 = api.call("POST", A + "checkpoint", own, 200, body={"description": "third"}, job_id=jid)
    statuses = {x["checkpoint_id"]: x["status"] for x in api.call("GET", A + "checkpoints", own, 200, job_id=jid)["checkpoints"]}
    assert statuses == {c1["checkpoint_id"]: "Cleared", c2["checkpoint_id"]: "Present",
                        c3["checkpoint_id"]: "Present"}, f"num_retained 2 keeps the 2 newest Present: {statuses}"
    assert api.call("POST", A + "update", own, 200, body={"num_retained": 0}, job_id=jid)["num_retained"] == 0

    # Signals; what a running job refuses.
    api.call("POST", A + "signal", own, 400, body={"signal": 0}, job_id=jid)
    assert api.call("POST", A + "signal", own, 200, body={"signal": 18}, job_id=jid) == {}  # SIGCONT
    for action in ("hold", "release", "restart", "resume"):
        api.call("POST", A + action, own, 409, body={}, job_id=jid)

    # Vacate, then restart from an older checkpoint chosen by id.
    v = api.call("POST", A + "vacate", own, 200, body={"description": "vacating"}, job_id=jid)
    assert (v["status"], v["source"], v["description"]) == ("Present", "vacate", "vacating"), v
    job = wait_job(api, own, jid, "PENDING")
    assert job["reason"] == "Vacated", job
    api.call("POST", A + "restart", own, 404, body={"checkpoint_id": 99999}, job_id=jid)
    api.call("POST", A + "restart", own, 409, body={"checkpoint_id": c1["checkpoint_id"]}, job_id=jid)  # Cleared
    job = api.call("POST", A + "restart", own, 200, body={"checkpoint_id": c2["checkpoint_id"]}, job_id=jid)
    assert job["state"] == "PENDING" and job["restore_from"] == c2["checkpoint_id"], job
    job = wait_job(api, own, jid, "RUNNING")
    assert job["generation"] >= 2, job

    # Suspend (a checkpoint, then SUSPENDED), resume (restored from it).
    sc = api.call("POST", A + "suspend", own, 200, body={"description": "pause"}, job_id=jid)
    assert (sc["status"], sc["source"], sc["description"]) == ("Present", "suspend", "pause"), sc
    job = api.call("GET", J, own, 200, job_id=jid)
    assert (job["state"], job["restore_from"]) == ("SUSPENDED", sc["checkpoint_id"]), job
    api.call("POST", A + "restart", own, 409, body={}, job_id=jid)  # resume it instead

    # Delete: not the one to be restored from; another is Cleared; unknown ids.
    D = A + "checkpoints/{checkpoint_id}"
    api.call("DELETE", D, own, 409, job_id=jid, checkpoint_id=sc["checkpoint_id"])
    gone = api.call("DELETE", D, own, 200, job_id=jid, checkpoint_id=c3["checkpoint_id"])
    assert gone["checkpoint_id"] == c3["checkpoint_id"] and gone["status"] == "Cleared", gone
    api.call("DELETE", D, own, 404, job_id=jid, checkpoint_id=99999)
    api.call("DELETE", D, own, 400, job_id=jid, checkpoint_id="abc")
    job = api.call("POST", A + "resume", own, 200, body={}, job_id=jid)
    assert (job["state"], job["restore_from"]) == ("PENDING", sc["checkpoint_id"]), job
    wait_job(api, own, jid, "RUNNING")
    # Fewer retained: the surplus is Cleared at once, the newest kept.
    present = [x["checkpoint_id"] for x in api.call("GET", A + "checkpoints", own, 200, job_id=jid)["checkpoints"]
               if x["status"] == "Present"]
    assert present == [c2["checkpoint_id"], v["checkpoint_id"], sc["checkpoint_id"]], present
    api.call("POST", A + "update", own, 200, body={"num_retained": 1}, job_id=jid)
    after = {x["checkpoint_id"]: (x["status"], x["reason"])
             for x in api.call("GET", A + "checkpoints", own, 200, job_id=jid)["checkpoints"]}
    assert [k for k, (st, _) in after.items() if st == "Present"] == [sc["checkpoint_id"]], after
    assert "retention" in after[c2["checkpoint_id"]][1], after

    # Checkpoints per hour by status: every checkpoint of the cluster, counted once.
    stats = api.call("GET", "/v1/checkpoints/stats", oth, 200)["hours"]
    counted = collections.Counter()
    for h in stats:
        counted.update(h["counts"])
    actual = collections.Counter(x["status"] for j in api.call("GET", "/v1/jobs", oth, 200)["jobs"]
                                 for x in api.call("GET", A + "checkpoints", oth, 200, job_id=j["job_id"])["checkpoints"])
    assert +counted == +actual, (counted, actual)

    # Requeue (owner), then cancel (root); then it is over.
    assert api.call("POST", A + "requeue", own, 200, body={}, job_id=jid) == {}
    assert api.call("POST", A + "cancel", root, 200, body={}, job_id=jid) == {}
    job = wait_job(api, own, jid, "CANCELLED", timeout=30)
    for action in ("cancel", "signal", "checkpoint", "vacate", "suspend", "resume", "requeue", "hold"):
        api.call("POST", A + action, own, 409, body={}, job_id=jid)


def suspend_and_resume_in_place(api: Api, own: str, jid: int):
    j = api.call("POST", "/v1/jobs/{job_id}/suspend", own, 200, body={"in_place": True}, job_id=jid)
    assert j["job_id"] == jid and j["state"] == "SUSPENDED" and j["suspended_in_place"] is True, j
    api.call("POST", "/v1/jobs/{job_id}/suspend", own, 409, body={"in_place": True}, job_id=jid)
    api.call("POST", "/v1/jobs/{job_id}/checkpoint", own, 409, body={}, job_id=jid)
    j = api.call("POST", "/v1/jobs/{job_id}/resume", own, 200, body={}, job_id=jid)
    assert j["state"] == "RUNNING" and j["suspended_in_place"] is False, j


def test_suspend_in_place_as_soon_as_running(api: Api, tokens: Tokens, workdir: Path):
    """Slurm's suspend (in place) answers with the job's JSON, and so does its resume --
    also the moment the job is RUNNING (a checkpoint then waits for the start's answer,
    and a suspend must not be refused as "not running (state RUNNING)")."""
    own = tokens.owner
    jid = api.call("POST", "/v1/jobs", own, 200, body=submit_body(workdir, name="inplace1"))["job_id"]
    try:
        wait_job(api, own, jid, "RUNNING")
        suspend_and_resume_in_place(api, own, jid)
    finally:
        api.raw("POST", f"/v1/jobs/{jid}/cancel", tokens.root, b"{}")


def test_suspend_in_place_right_after_a_checkpoint(api: Api, tokens: Tokens, workdir: Path):
    """An in-place suspend asked for the moment a checkpoint is Present (as a console user
    clicks) is done, not refused because the node has not yet reported the dump's end."""
    own = tokens.owner
    jid = api.call("POST", "/v1/jobs", own, 200, body=submit_body(workdir, name="inplace2"))["job_id"]
    try:
        wait_job(api, own, jid, "RUNNING")
        time.sleep(3)  # the start confirmed and reported: only the checkpoint below is fresh
        c = api.call("POST", "/v1/jobs/{job_id}/checkpoint", own, 200, body={"description": "before"}, job_id=jid)
        assert c["status"] == "Present", c
        suspend_and_resume_in_place(api, own, jid)
    finally:
        api.raw("POST", f"/v1/jobs/{jid}/cancel", tokens.root, b"{}")


def test_held_job_hold_release_cancel(api: Api, tokens: Tokens, workdir: Path):
    own, root = tokens.owner, tokens.root
    A = "/v1/jobs/{job_id}/"
    jid = api.call("POST", "/v1/jobs", own, 200, body=submit_body(workdir, hold=True, name="held"))["job_id"]
    job = api.call("GET", "/v1/jobs/{job_id}", own, 200, job_id=jid)
    assert (job["state"], job["reason"], job["hold"]) == ("PENDING", "JobHeldUser", True), job
    assert api.call("POST", A + "hold", own, 200, body={}, job_id=jid) == {}
    api.call("POST", A + "requeue", own, 409, body={}, job_id=jid)  # pending already
    api.call("POST", A + "checkpoint", own, 409, body={}, job_id=jid)  # not running
    api.call("POST", A + "signal", own, 409, body={}, job_id=jid)
    # Held by root: its owner may not release it.
    assert api.call("POST", A + "hold", root, 200, body={}, job_id=jid) == {}
    assert api.call("GET", "/v1/jobs/{job_id}", own, 200, job_id=jid)["reason"] == "JobHeldAdmin"
    api.call("POST", A + "release", own, 403, body={}, job_id=jid)
    assert api.call("POST", A + "hold", own, 200, body={}, job_id=jid) == {}
    assert api.call("GET", "/v1/jobs/{job_id}", own, 200, job_id=jid)["reason"] == "JobHeldUser"
    assert api.call("POST", A + "release", own, 200, body={}, job_id=jid) == {}
    job = api.call("GET", "/v1/jobs/{job_id}", own, 200, job_id=jid)
    assert job["hold"] is False and job["reason"] != "JobHeldUser", job
    assert api.call("POST", A + "cancel", own, 200, body={}, job_id=jid) == {}
    wait_job(api, own, jid, "CANCELLED", timeout=30)
    api.call("POST", A + "restart", own, 409, body={}, job_id=jid)  # no checkpoint
    api.call("POST", A + "release", own, 409, body={}, job_id=jid)


def test_submit_with_num_retained(api: Api, tokens: Tokens, workdir: Path):
    """Retained checkpoints are settable at submission too (issue 16: sbatch and scontrol
    update)."""
    jid = api.call("POST", "/v1/jobs", tokens.owner, 200,
                   body=submit_body(workdir, hold=True, name="retain", num_retained=4))["job_id"]
    try:
        assert api.call("GET", "/v1/jobs/{job_id}", tokens.owner, 200, job_id=jid)["num_retained"] == 4
    finally:
        api.call("POST", "/v1/jobs/{job_id}/cancel", tokens.owner, 200, body={}, job_id=jid)


def test_bad_requests(api: Api, tokens: Tokens, workdir: Path):
    own, root = tokens.owner, tokens.root
    # Submit: not JSON, and JSON the controller refuses.
    for raw in (b"{not json", b"[1,", b"\xff\xfe"):
        e = api.call("POST", "/v1/jobs", own, 400, raw_body=raw)
        assert e["error"], e
    for bad in ({"script": "echo no shebang\n"}, {"work_dir": "relative/dir"}, {"partition": "nosuch"},
                {"cpus_per_task": 0}, {"ntasks": "two"}, {"cpus_per_task": 2048, "ntasks": 1024},
                {"mem_mb": 10**9}):
        api.call("POST", "/v1/jobs", own, 400, body=submit_body(workdir, **bad))
    # A held job to aim at; its state must not change.
    jid = api.call("POST", "/v1/jobs", own, 200, body=submit_body(workdir, hold=True, name="target"))["job_id"]
    for method, template, op in operations(api.doc):
        if method == "POST" and "requestBody" in op:
            params = {"job_id": jid, "name": "node1"}
            tok = root if "{name}" in template else own
            api.call(method, template, tok, 400, raw_body=b'{"state": ', **params)
            api.call(method, template, tok, 400, raw_body=b"not json at all", **params)
    # A body without a Content-Length (411), or announcing more than 16 MiB (413).
    for template, headers, body in (("/v1/jobs/{job_id}/cancel", {"Transfer-Encoding": "chunked"}, b"2\r\n{}\r\n0\r\n\r\n"),
                                    ("/v1/jobs/{job_id}/cancel", {}, None),
                                    ("/v1/jobs", {"Content-Length": str(17 << 20)}, None)):
        status, text = raw_http(api.base, "POST", template.format(job_id=jid), own, headers, body)
        r = Reply(status, text)
        api.check("POST", template, r)
        assert r.status == (413 if "Content-Length" in headers else 411), (template, headers, r)
    # Fields of the wrong type.
    api.call("POST", "/v1/jobs/{job_id}/signal", own, 400, body={"signal": "TERM"}, job_id=jid)
    api.call("POST", "/v1/jobs/{job_id}/checkpoint", own, 400, body={"description": 5}, job_id=jid)
    # Ids that are not integers.
    api.call("GET", "/v1/jobs/{job_id}", own, 400, job_id="abc")
    api.call("GET", "/v1/jobs/{job_id}/checkpoints", own, 400, job_id="12x")
    api.call("POST", "/v1/jobs/{job_id}/cancel", own, 400, body={}, job_id="-")
    # Unknown job: 404 from every route that names one, for the owner of nothing and root.
    for method, template, op in operations(api.doc):
        if "{job_id}" not in template:
            continue
        for tok in (own, root):
            body = {} if method == "POST" else None
            if template.endswith("/update"):
                body = {"num_retained": 1}
            e = api.call(method, template, tok, 404, body=body, job_id=999999, checkpoint_id=1)
            assert e["error"], e
    # Node updates (root): bad state, no reason, unknown node, nothing to undo.
    U = "/v1/nodes/{name}/update"
    api.call("POST", U, root, 400, body={"state": "BOGUS"}, name="node1")
    api.call("POST", U, root, 400, body={"state": "DRAIN"}, name="node1")
    api.call("POST", U, root, 400, body={"state": "DOWN", "reason": "  "}, name="node1")
    api.call("POST", U, root, 404, body={"state": "DRAIN", "reason": "maintenance"}, name="nosuchnode")
    api.call("POST", U, root, 409, body={"state": "UNDRAIN"}, name="node1")
    api.call("POST", U, root, 409, body={"state": "RESUME"}, name="node2")
    job = api.call("GET", "/v1/jobs/{job_id}", own, 200, job_id=jid)
    assert (job["state"], job["hold"]) == ("PENDING", True), job
    api.call("POST", "/v1/jobs/{job_id}/cancel", own, 200, body={}, job_id=jid)


def test_node_drain_and_undrain(api: Api, tokens: Tokens):
    root, U = tokens.root, "/v1/nodes/{name}/update"
    idle = [n["name"] for n in api.call("GET", "/v1/nodes", root, 200)["nodes"] if n["alloc_cpus"] == 0]
    assert idle, "a node without jobs"
    name = idle[-1]
    assert api.call("POST", U, root, 200, body={"state": "DRAIN", "reason": "rest api test"}, name=name) == {}
    node = next(n for n in api.call("GET", "/v1/nodes", tokens.other, 200)["nodes"] if n["name"] == name)
    assert node["state"] == "DRAINED" and node["drain"] is True, node
    assert (node["reason"], node["reason_user"]) == ("rest api test", "root") and node["reason_time"] > 0, node
    assert api.call("POST", U, root, 200, body={"state": "undrain"}, name=name) == {}
    node = next(n for n in api.call("GET", "/v1/nodes", tokens.other, 200)["nodes"] if n["name"] == name)
    assert node["state"] == "IDLE" and node["drain"] is False and node["reason"] == "", node


def test_tokens(api: Api, tokens: Tokens, cluster: Cluster, workdir: Path):
    """Every documented route refuses every bad token with 401, and does nothing."""
    own = tokens.owner
    jid = api.call("POST", "/v1/jobs", own, 200, body=submit_body(workdir, hold=True, name="victim"))["job_id"]
    njobs = len(api.call("GET", "/v1/jobs", own, 200)["jobs"])
    header, payload = jwt_parts(own)
    assert header.get("alg") == "HS256" and payload["sun"] == tokens.owner_name, (header, payload)
    assert payload["exp"] > payload["iat"] and abs(payload["iat"] - time.time()) < 60, payload
    key = os.urandom(32)

    # scontrol token: lifespan, and username= for root only.
    short = cluster.token(user=tokens.owner_name, lifespan=2)
    assert jwt_parts(short)[1]["exp"] - jwt_parts(short)[1]["iat"] == 2
    r = cluster.cmd("scontrol", "token", "username=root", user=tokens.owner_name, check=False)
    assert r.returncode != 0 and "SLURM_JWT" not in r.stdout, "only root may get a token for another user"
    r = cluster.cmd("scontrol", "token", f"username={tokens.other_name}")
    other_by_root = r.stdout.strip().removeprefix("SLURM_JWT=")
    assert api.call("GET", "/v1/whoami", other_by_root, 200)["user"] == tokens.other_name
    nosuch = "fschednosuchuser"
    r = cluster.cmd("scontrol", "token", f"username={nosuch}", check=False)
    bad = {
        "missing": None,
        "empty": "",
        "garbage": "not-a-token",
        "two parts": ".".join(own.split(".")[:2]),
        "bad base64": "%%%." + own.split(".", 1)[1],
        "truncated signature": own[:-4],
        "forged signature": make_jwt(header, payload, key),
        "claims changed": make_jwt(header, {**payload, "sun": "root"}, key),
        "root's claims, owner's signature": ".".join(own.split(".")[:1] + [b64url(json.dumps({**payload, "sun": "root"}).encode())] + own.split(".")[2:]),
        "alg none": make_jwt({"alg": "none", "typ": "JWT"}, payload, None),
        "alg none, user root": make_jwt({"alg": "none", "typ": "JWT"}, {**payload, "sun": "root"}, None),
        "alg HS512": make_jwt({"alg": "HS512", "typ": "JWT"}, payload, key, hashlib.sha512),
        "long garbage": "a" * 8000,
    }
    if r.returncode == 0:
        bad["unknown user (scontrol)"] = r.stdout.strip().removeprefix("SLURM_JWT=")
    # With the controller's key (root can read it): claims it must refuse though signed well.
    keyfile = Path(cluster.settings["StateSaveLocation"]) / "jwt_hs256.key"
    real = keyfile.read_bytes()
    st = keyfile.stat()
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0, f"{keyfile} must be root's alone: {oct(st.st_mode)}"
    signing = own.rsplit(".", 1)
    assert hmac.compare_digest(b64url(hmac.new(real, signing[0].encode(), hashlib.sha256).digest()), signing[1]), \
        "tokens are HS256 over the key file's bytes"
    now = int(time.time())
    bad.update({
        "unknown user": make_jwt(header, {**payload, "sun": nosuch}, real),
        "empty user": make_jwt(header, {**payload, "sun": ""}, real),
        "expired (signed)": make_jwt(header, {**payload, "iat": now - 100, "exp": now - 10}, real),
        "no exp": make_jwt(header, {"sun": tokens.owner_name, "iat": now}, real),
        "exp a string": make_jwt(header, {**payload, "exp": str(now + 1000)}, real),
        "alg HS512 with the key": make_jwt({"alg": "HS512", "typ": "JWT"}, payload, real, hashlib.sha512),
        "alg HS384 with the key": make_jwt({"alg": "HS384", "typ": "JWT"}, payload, real, hashlib.sha384),
    })
    # The short token has expired by now (its exp is in whole seconds; `now >= exp` refuses).
    time.sleep(max(0.0, jwt_parts(short)[1]["exp"] - time.time() + 1.2))
    bad["expired"] = short

    messages = {}
    for what, tok in bad.items():
        for method, template, op in operations(api.doc):
            if "401" not in op["responses"]:
                continue
            body = None
            if method == "POST":
                body = submit_body(workdir) if template == "/v1/jobs" else {}
                if template.endswith("/update"):
                    body = {"num_retained": 1} if "{job_id}" in template else {"state": "DRAIN", "reason": "x"}
            for bearer in (False, True):
                e = api.call(method, template, tok, 401, body=body, bearer=bearer and tok is not None,
                             job_id=jid, checkpoint_id=1, name="node1")
                messages[what] = e["error"]
    assert messages["expired"] != messages["garbage"] and "expire" in messages["expired"].lower(), messages
    # Nothing happened.
    job = api.call("GET", "/v1/jobs/{job_id}", own, 200, job_id=jid)
    assert (job["state"], job["hold"], job.get("num_retained")) == ("PENDING", True, 0), job
    assert len(api.call("GET", "/v1/jobs", own, 200)["jobs"]) == njobs
    assert all(not n["drain"] for n in api.call("GET", "/v1/nodes", own, 200)["nodes"])
    # Other headers: Basic auth is no token; a good token is still good.
    r = api.raw("GET", "/v1/whoami", headers={"Authorization": "Basic " + b64url(b"root:root")})
    api.check("GET", "/v1/whoami", r)
    assert r.status == 401, r
    api.call("POST", "/v1/jobs/{job_id}/cancel", own, 200, body={}, job_id=jid, bearer=True)


def test_oversized_header_is_400_with_a_message(api: Api):
    """A token over the 8 KiB a header line may hold makes the request unparsable
    (cpp-httplib's limit): 400 with the JSON error body saying so, never a reply."""
    for bearer in (False, True):
        r = api.raw("GET", "/v1/whoami", "a" * 10000, bearer=bearer)
        assert r.status == 400, r
        assert r.json and "header line over 8 KiB" in r.json["error"], r


def test_one_spelling_per_route_object_bodies_and_any_case_bearer(api: Api, tokens: Tokens):
    """Paths with an empty segment are not routes (404), an action's body must be a JSON
    object (400), and the Authorization scheme's name is case-insensitive (RFC 7235)."""
    for path in ("/v1/jobs/", "/v1//jobs", "/v1/whoami/"):
        r = api.raw("GET", path, tokens.root)
        assert r.status == 404 and r.json and "no route" in r.json["error"], (path, r)
    for body in (b"[1]", b'"x"', b"3"):
        r = api.raw("POST", "/v1/jobs", tokens.owner, body)
        assert r.status == 400 and "must be a JSON object" in r.json["error"], (body, r)
    r = api.raw("POST", "/v1/jobs", tokens.owner,
                json.dumps(submit_body(Path("/tmp"), env={"A": 1})).encode())
    assert r.status == 400 and "env must be an object of strings: A is 1" in r.json["error"], r
    for scheme in ("bearer", "BEARER"):
        r = api.raw("GET", "/v1/whoami", headers={"Authorization": f"{scheme} {tokens.owner}"})
        assert r.status == 200 and r.json["user"] == tokens.owner_name, (scheme, r)


def test_routes_answer_as_documented(api: Api, tokens: Tokens, workdir: Path):
    """Each documented route answers (not 404) on a finished job; every other method on
    a documented path is a 405; paths not documented (the node-facing routes among
    them) are 404."""
    root = tokens.root
    jid = api.call("POST", "/v1/jobs", tokens.owner, 200,
                   body=submit_body(workdir, script="#!/bin/bash\ntrue\n", name="quick"))["job_id"]
    wait_job(api, root, jid, "COMPLETED", timeout=60)
    documented = {(m, t) for m, t, _ in operations(api.doc)}
    for method, template in sorted(documented):
        body = None
        if method == "POST":
            body = {"state": "BOGUS"} if "{name}" in template else {}
        # checkpoint_id "abc": a 400 from the route's handler, never its 404.
        path = template.format(job_id=jid, checkpoint_id="abc", name="node1")
        r = api.raw(method, path, root, None if body is None else json.dumps(body).encode())
        api.check(method, template, r)
        assert r.status not in (404, 405), f"{method} {path}: {r}"
        for other in METHODS:
            if (other, template) in documented or template in DOC_URLS:
                continue
            r = api.raw(other, path, root, b"{}" if other != "GET" else None)
            assert r.status == 405 and r.json and r.json.get("error"), f"{other} {path}: expected 405, got {r}"
            validate(api.doc, {"$ref": "#/components/schemas/Error"}, r.strict)
    for method, path in MUNGE_ONLY + [("GET", "/v1/nosuch"), ("GET", "/v1"), ("GET", "/v2/jobs"),
                                       ("GET", f"/v1/jobs/{jid}/nosuch"), ("POST", f"/v1/jobs/{jid}/nosuch"),
                                       ("GET", f"/v1/jobs/{jid}/checkpoints/1/x"), ("GET", "/v1/nodes/node1"),
                                       ("GET", "/v1/checkpoints"), ("POST", "/v1/node/launch"),
                                       ("GET", "/v1/node/jobs")]:
        r = api.raw(method, path, root, b"{}" if method == "POST" else None)
        assert r.status == 404 and r.json and r.json.get("error"), f"{method} {path}: expected 404, got {r}"
        validate(api.doc, {"$ref": "#/components/schemas/Error"}, r.strict)


def test_source_routes_are_documented():
    """The routes the controller registers (src/ctld/*.cpp, route("METHOD", "/v1/...")),
    less the node-facing ones, are exactly the documented ones."""
    pattern = re.compile(r'route(?:_raw)?\(\s*"([A-Z]+)"\s*,\s*"(/[^"]*)"')
    found = set()
    for f in sorted((REPO / "src/ctld").glob("*.cpp")):
        found |= {(m, p) for m, p in pattern.findall(f.read_text())}
    assert found, "no route found in src/ctld"
    served = found - set(MUNGE_ONLY)
    documented = {(m, re.sub(r"{\w+}", "{}", t)) for m, t, _ in operations(load_doc()) if t not in DOC_URLS}
    assert served - documented == set(), f"served, not documented: {sorted(served - documented)}"
    assert documented - served == set(), f"documented, not registered: {sorted(documented - served)}"


def test_every_route_was_exercised():
    """Every documented operation answered 200 at least once in this module."""
    doc = load_doc()
    missing = [f"{m} {t}" for m, t, _ in operations(doc) if 200 not in SEEN.get((m, t), set())]
    assert not missing, f"never answered 200: {missing}"


def test_tls(e2e: E2E, build_dir):
    """With RestTLSCertFile and RestTLSKeyFile the REST port is HTTPS (and may bind a
    non-loopback address): a client that trusts the certificate gets its replies; plain
    HTTP gets no reply; a key that is not the certificate's stops fschedctld at start."""
    import ssl
    d = e2e.jobs_dir.parent / "rest-tls"
    d.mkdir(parents=True, exist_ok=True)
    cert, key, other = d / "cert.pem", d / "key.pem", d / "other.pem"
    for k in (key, other):
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", str(k)], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-x509", "-key", str(key), "-out", str(cert), "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    c = Cluster(build_dir, e2e.jobs_dir.parent / "rest-tls-cluster", nodes=1,
                RestTLSCertFile=cert, RestTLSKeyFile=key, RestAddr="0.0.0.0").start()
    try:
        token = c.token()
        ctx = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(f"https://127.0.0.1:{c.rest_port}/v1/whoami",
                                     headers={"X-SLURM-USER-TOKEN": token})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            assert json.loads(r.read()) == {"user": "root", "uid": 0, "root": True}
        # Plain HTTP on the TLS port: the handshake fails, no reply (and no token in clear).
        conn = http.client.HTTPConnection("127.0.0.1", c.rest_port, timeout=15)
        try:
            conn.request("GET", "/v1/whoami", headers={"X-SLURM-USER-TOKEN": token})
            with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
                conn.getresponse()
        finally:
            conn.close()
        assert "https://0.0.0.0" in c.log()
        # A client that sends its handshake one byte a second is dropped when the
        # request's 10 s head deadline has passed, not held for as long as it trickles.
        import socket
        hello = bytes.fromhex("16030100c8010000c40303") + bytes(200)
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", c.rest_port), timeout=30) as s:
            try:
                for b in hello:
                    s.send(bytes([b]))
                    time.sleep(1)
                    if time.monotonic() - t0 > 25:
                        break
                s.settimeout(10)
                closed = s.recv(1) == b""
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        took = time.monotonic() - t0
        assert closed and took < 16, f"a trickling TLS handshake held its connection {took:.0f} s"
    finally:
        c.stop()
    bad = c.settings | {"RestTLSKeyFile": other}
    c.write_conf(c.conf_path, **bad)
    r = subprocess.run([str(build_dir / "src/ctld/fschedctld"), "-D"], env=c.env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and f"cannot load the private key {other} for the certificate {cert}" in r.stderr \
        and "mismatch" in r.stderr, r.stderr


def test_range_requests_are_ignored(api: Api, tokens: Tokens):
    """httplib would apply any number of byte ranges to any reply (memory grows with
    their count): Range is ignored, the whole reply is sent."""
    many = "bytes=" + ",".join(["0-"] * 1000)
    for path, token in (("/openapi.json", None), ("/v1/partitions", tokens.root)):
        r = api.raw("GET", path, token, headers={"Range": many})
        assert r.status == 200 and r.json is not None, (path, r)
        full = api.raw("GET", path, token)
        assert r.text == full.text, path


def test_webroot_must_be_roots(e2e: E2E, build_dir, test_user):
    """The console runs with the token of whoever logs in: a WebRoot file another user
    could change would be that user's script in root's session. fschedctld refuses it."""
    web = e2e.jobs_dir.parent / "bad-web"
    web.mkdir(parents=True, exist_ok=True)
    os.chmod(web, 0o755)
    (web / "index.html").write_text("<!doctype html>")
    os.chmod(web / "index.html", 0o644)
    pw = pwd.getpwnam(test_user)
    os.chown(web / "index.html", pw.pw_uid, pw.pw_gid)
    c = Cluster(build_dir, e2e.jobs_dir.parent / "bad-web-cluster", nodes=1, WebRoot=web)
    r = subprocess.run([str(build_dir / "src/ctld/fschedctld"), "-D"], env=c.env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and f"WebRoot: {web}/index.html must be owned by uid 0" in r.stderr, r.stderr
    os.chown(web / "index.html", 0, 0)
    os.chmod(web / "index.html", 0o600)
    r = subprocess.run([str(build_dir / "src/ctld/fschedctld"), "-D"], env=c.env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "is not readable by all" in r.stderr, r.stderr
