"""Independent SigV4 oracle for keyward's tests: botocore computes the Authorization header for
each request keyward signed (same method, URL, signed headers, body, credentials and time).
Reads a JSON list of cases on stdin, prints a JSON list of Authorization values."""
import base64
import datetime
import json
import sys
from unittest import mock

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

out = []
for case in json.load(sys.stdin):
    creds = Credentials(case["access_key"], case["secret_key"], case.get("token"))
    request = AWSRequest(method=case["method"], url=case["url"], data=base64.b64decode(case["body"]), headers=case["headers"])
    if case["unsigned"]:
        request.context["payload_signing_enabled"] = False
    when = datetime.datetime.strptime(case["amz_date"], "%Y%m%dT%H%M%SZ")
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
        botocore.auth.SigV4Auth(creds, case["service"], case["region"]).add_auth(request)
    out.append(request.headers["Authorization"])
print(json.dumps(out))
