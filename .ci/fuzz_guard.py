"""Schemathesis hooks for `.ci/fuzz`: keep the fuzzer from sawing off the
branch it sits on.

Every operation is fuzzed, but a request that would end the run itself is
pointed at an id that does not exist (and so answers 404, which is checked
like any other answer):
- revoking or rotating the token the fuzzer authenticates with;
- deleting the node of `shellwego up`'s own agent (`up` stops when its
  agent's node is gone);
- demoting or removing the bootstrap admin (the token's user);
- turning on `enforce_mfa` in the admin's organization (every later call
  would be 403).

And the event stream (`GET /v1/events/stream`), which never ends by design,
is asked to end after a second (`max_seconds=1`) unless the case already
asks for an invalid value (a 400, checked like any other answer).

The ids come from `.ci/fuzz`, which reads them from the API before the run.
"""

import os

import schemathesis

PROTECTED = {
    "token_id": os.environ.get("SHELLWEGO_FUZZ_TOKEN_ID"),
    "node_id": os.environ.get("SHELLWEGO_FUZZ_NODE_ID"),
    "user_id": os.environ.get("SHELLWEGO_FUZZ_USER_ID"),
    "org_id": os.environ.get("SHELLWEGO_FUZZ_ORG_ID"),
}

# (method, path template, path parameter) whose protected value must not
# reach the server.
GUARDED = {
    ("DELETE", "/v1/auth/token/{token_id}", "token_id"),
    ("DELETE", "/v1/user/tokens/{token_id}", "token_id"),
    ("POST", "/v1/user/tokens/{token_id}/rotate", "token_id"),
    ("DELETE", "/v1/nodes/{node_id}", "node_id"),
    ("PATCH", "/v1/organizations/{org_id}/members/{user_id}", "user_id"),
    ("DELETE", "/v1/organizations/{org_id}/members/{user_id}", "user_id"),
}

STAND_IN = {
    "token_id": "tok_fuzzguard",
    "node_id": "node_fuzzguard",
    "user_id": "usr_fuzzguard",
    "org_id": "org_fuzzguard",
}


def _enables_mfa(body):
    return (
        isinstance(body, dict)
        and isinstance(body.get("settings"), dict)
        and bool(body["settings"].get("enforce_mfa"))
    )


@schemathesis.hook
def before_call(context, case, kwargs):
    method = case.method.upper()
    path = case.operation.path
    params = case.path_parameters or {}
    for m, p, name in GUARDED:
        if method == m and path == p and PROTECTED[name] and params.get(name) == PROTECTED[name]:
            params[name] = STAND_IN[name]
    if (
        method == "PATCH"
        and path == "/v1/organizations/{org_id}"
        and PROTECTED["org_id"]
        and params.get("org_id") == PROTECTED["org_id"]
        and _enables_mfa(case.body)
    ):
        params["org_id"] = STAND_IN["org_id"]
    if method == "GET" and path == "/v1/events/stream":
        query = case.query if isinstance(case.query, dict) else {}
        wanted = str(query.get("max_seconds", "1"))
        valid = wanted.isdigit() and 1 <= int(wanted) <= 86400
        if valid:
            # A valid value (or none): a second at most.
            query["max_seconds"] = 1
        case.query = query
