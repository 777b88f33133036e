"""Independent RDS IAM token oracle for keyward's tests: botocore's generate_db_auth_token for
each case (credentials, host, port, user, region, signing time). Reads a JSON list of cases on
stdin, prints a JSON list of tokens."""
import datetime
import json
import sys
from unittest import mock

import botocore.auth
import botocore.session

out = []
for case in json.load(sys.stdin):
    session = botocore.session.get_session()
    client = session.create_client(
        "rds",
        region_name=case["region"],
        aws_access_key_id=case["access_key"],
        aws_secret_access_key=case["secret_key"],
        aws_session_token=case.get("token"),
    )
    when = datetime.datetime.strptime(case["amz_date"], "%Y%m%dT%H%M%SZ")
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
        out.append(
            client.generate_db_auth_token(
                DBHostname=case["host"], Port=case["port"], DBUsername=case["user"], Region=case["region"]
            )
        )
print(json.dumps(out))
