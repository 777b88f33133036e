"""A real STS for keyward's tests: moto's server (not ours) with its request authentication on,
so it refuses unknown keys and bad signatures, behind a small front that

- logs the parameters of every STS call keyward makes (moto does not enforce ExternalId);
- lets the always-unsigned AssumeRoleWithWebIdentity through: it checks the web identity token
  against the expected one, then signs the call with the admin key (moto answers an unsigned
  call with a 500 when authentication is on);
- refuses AssumeRole for the session names a test asks it to (GET /fail/NAME/on|off);
- serves container credentials (ECS / EKS Pod Identity) at /container, in AWS's documented
  response shape, after checking the Authorization token: a session of the role made by
  AssumeRole.

Prints one JSON line when ready: the front's port, moto's port, the app user's key, the role
ARNs. Usage: aws_sts.py WEB_IDENTITY_TOKEN CONTAINER_TOKEN
"""
import json
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Authentication on from the first call after the setup below (moto reads this at import).
SETUP_CALLS = 7
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_CALLS)

import boto3  # noqa: E402
import botocore.auth  # noqa: E402
import botocore.awsrequest  # noqa: E402
import botocore.credentials  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

WEB_TOKEN, CONTAINER_TOKEN = sys.argv[1], sys.argv[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


moto_port = free_port()
moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
moto.start()
MOTO = f"http://127.0.0.1:{moto_port}"

boot = dict(endpoint_url=MOTO, region_name="us-east-1",
            aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="boot")
iam = boto3.client("iam", **boot)
iam.create_user(UserName="app")  # 1
key = iam.create_access_key(UserName="app")["AccessKey"]  # 2
iam.put_user_policy(  # 3
    UserName="app", PolicyName="all",
    PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
trust = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
roles = {}
for name in ["reader", "web", "container", "profiled"]:  # 4..7
    roles[name] = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
ADMIN = botocore.credentials.Credentials(key["AccessKeyId"], key["SecretAccessKey"])
# From here on moto authenticates: prove it before anyone relies on it.
bad = boto3.client("sts", endpoint_url=MOTO, region_name="us-east-1",
                   aws_access_key_id=key["AccessKeyId"], aws_secret_access_key="wrong")
try:
    bad.get_caller_identity()
    sys.exit("moto accepted a bad signature: its authentication is off")
except bad.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "SignatureDoesNotMatch", e.response
unknown = boto3.client("sts", endpoint_url=MOTO, region_name="us-east-1",
                       aws_access_key_id="AKIAUNKNOWNKEY000000", aws_secret_access_key="x")
try:
    unknown.get_caller_identity()
    sys.exit("moto accepted an unknown key: its authentication is off")
except unknown.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidClientTokenId", e.response

calls = []
lock = threading.Lock()
# Role session names whose AssumeRole the front refuses (AccessDenied), set by GET /fail/NAME/on.
failing = set()


def signed_post(body: bytes, headers=None):
    request = botocore.awsrequest.AWSRequest(
        method="POST", url=MOTO + "/", data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    botocore.auth.SigV4Auth(ADMIN, "sts", "us-east-1").add_auth(request)
    prepared = request.prepare()
    req = urllib.request.Request(MOTO + "/", data=body, method="POST", headers=dict(prepared.headers))
    return send(req)


def send(req):
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", "text/xml"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", "text/xml"), e.read()


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/log":
            with lock:
                body = json.dumps(calls).encode()
            return self.reply(200, "application/json", body)
        if self.path.startswith("/fail/"):
            _, _, name, state = self.path.split("/")
            with lock:
                (failing.add if state == "on" else failing.discard)(name)
            return self.reply(200, "text/plain", b"ok")
        if self.path.startswith("/container"):
            if self.headers.get("Authorization") != CONTAINER_TOKEN:
                return self.reply(401, "application/json", b'{"message":"bad token"}')
            form = urllib.parse.urlencode({
                "Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": roles["container"],
                "RoleSessionName": "container-creds", "DurationSeconds": "900"}).encode()
            status, _, xml = signed_post(form)
            if status != 200:
                return self.reply(500, "text/plain", xml)
            text = xml.decode()
            pick = lambda tag: text.split(f"<{tag}>")[1].split(f"</{tag}>")[0]  # noqa: E731
            with lock:
                calls.append({"Action": "container"})
            # AWS's documented container credentials response.
            body = json.dumps({
                "AccessKeyId": pick("AccessKeyId"), "SecretAccessKey": pick("SecretAccessKey"),
                "Token": pick("SessionToken"), "Expiration": pick("Expiration"),
                "RoleArn": roles["container"]}).encode()
            return self.reply(200, "application/json", body)
        self.reply(404, "text/plain", b"not found")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        form = dict(urllib.parse.parse_qsl(body.decode()))
        entry = {k: v for k, v in form.items() if k != "WebIdentityToken"}
        entry["signed"] = self.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256")
        if form.get("Action") == "AssumeRoleWithWebIdentity":
            entry["token_ok"] = form.get("WebIdentityToken") == WEB_TOKEN
            with lock:
                calls.append(entry)
            if not entry["token_ok"]:
                err = (b"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
                       b"<Message>the web identity token is not the one issued</Message></Error></ErrorResponse>")
                return self.reply(400, "text/xml", err)
            status, ctype, out = signed_post(body)
            return self.reply(status, ctype, out)
        with lock:
            calls.append(entry)
            refused = form.get("Action") == "AssumeRole" and form.get("RoleSessionName") in failing
        if refused:
            err = (b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
                   b"<Message>the front refuses this session now</Message></Error></ErrorResponse>")
            return self.reply(403, "text/xml", err)
        # The Host header stays the front's: it is what the caller signed.
        headers = {k: v for k, v in self.headers.items() if k.lower() != "content-length"}
        status, ctype, out = send(urllib.request.Request(MOTO + self.path, data=body, method="POST", headers=headers))
        self.reply(status, ctype, out)


def exit_with_the_test():
    """The test binary holds our stdin: when it ends, so do we (and moto with us)."""
    sys.stdin.read()
    os._exit(0)


threading.Thread(target=exit_with_the_test, daemon=True).start()
server = ThreadingHTTPServer(("127.0.0.1", 0), Front)
print(json.dumps({
    "front": server.server_address[1], "moto": moto_port,
    "key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "roles": roles,
}), flush=True)
server.serve_forever()
