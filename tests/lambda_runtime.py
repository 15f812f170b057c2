"""AWS Lambda for the tests: the Runtime API as its published contract (2018-06-01) has it, and a function under awslambdaric.

The stand-in is what Lambda's RAPID is to one execution environment: the runtime long-polls
``GET /2018-06-01/runtime/invocation/next`` for an event (its id and deadline in the
``Lambda-Runtime-*`` headers), then posts ``/invocation/{id}/response`` or ``/invocation/{id}/error``
(202), or ``/runtime/init/error`` (202) when the handler cannot be loaded. Anything else is refused
as the API refuses it: an unknown request id (400) or path (404). ``LambdaFunction`` runs the real
runtime interface client (awslambdaric, as AWS's Python images run it) against it, from the repo as
its task root, and freezes it between invocations with SIGSTOP as Lambda freezes a sandbox.

The events are those API Gateway (REST, 1.0; HTTP API, 2.0), function URLs (2.0) and ALBs send, in
the shapes AWS documents.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.servers import ROOT, VENV_BIN, clean_environ, wait_until

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:ice-servers"


class RuntimeApi:
    """The Runtime API of one execution environment, on loopback: ``invoke`` hands the runtime an event and waits for its answer."""

    def __init__(self):
        """Bind a free loopback port; ``start`` serves."""
        self._events: queue.Queue = queue.Queue()
        self._results: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self.init_errors: list[dict] = []  # bodies and error types of POST /runtime/init/error
        self.next_calls = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_port}"

    def start(self) -> RuntimeApi:
        """Serve in a daemon thread."""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def invoke(self, event: dict, timeout: float = 30) -> dict:
        """Queue ``event`` for the runtime; return what it posted: {"kind": "response" or "error", "body": ..., "headers": ...}."""
        request_id = str(uuid.uuid4())
        answer: queue.Queue = queue.Queue()
        with self._lock:
            self._results[request_id] = answer
        self._events.put((request_id, event, time.time() + timeout))
        try:
            return answer.get(timeout=timeout)
        finally:
            with self._lock:
                self._results.pop(request_id, None)

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path != f"{PREFIX}/invocation/next":
                    return self._send(404, {"errorMessage": "not found", "errorType": "InvalidRequest"})
                api.next_calls += 1
                request_id, event, deadline = api._events.get()  # the runtime waits as long as it takes, as with Lambda
                body = json.dumps(event).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(deadline * 1000)))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN)
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000;Sampled=0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == f"{PREFIX}/init/error":
                    api.init_errors.append({"type": self.headers.get("Lambda-Runtime-Function-Error-Type"), "body": json.loads(body)})
                    return self._send(202, {"status": "OK"})
                parts = self.path.removeprefix(f"{PREFIX}/invocation/").split("/")
                if not self.path.startswith(f"{PREFIX}/invocation/") or len(parts) != 2 or parts[1] not in ("response", "error"):
                    return self._send(404, {"errorMessage": "not found", "errorType": "InvalidRequest"})
                with api._lock:
                    waiter = api._results.get(parts[0])
                if waiter is None:
                    return self._send(400, {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"})
                headers = {"Lambda-Runtime-Function-Error-Type": self.headers.get("Lambda-Runtime-Function-Error-Type")}
                waiter.put({"kind": parts[1], "body": json.loads(body), "headers": headers})
                self._send(202, {"status": "OK"})

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler


class LambdaFunction:
    """One execution environment: awslambdaric running ``wsgi.lambda_handler`` against its own RuntimeApi."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str = "ice-servers"):
        """Prepare; ``start`` runs the runtime (its init happens at start, as on Lambda)."""
        self.api = RuntimeApi().start()
        self.env = {
            **clean_environ(),
            **env,
            "AWS_LAMBDA_RUNTIME_API": self.api.address,
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_REGION": "us-east-1",
            "LAMBDA_TASK_ROOT": str(ROOT),
            "_HANDLER": "wsgi.lambda_handler",
        }
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> LambdaFunction:
        """Start the runtime interface client."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "awslambdaric", "wsgi.lambda_handler"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        return self

    def invoke(self, event: dict, timeout: float = 30) -> dict:
        """Invoke with ``event``; return the handler's result (the response event), or raise with the runtime's error."""
        result = self.api.invoke(event, timeout)
        if result["kind"] != "response":
            raise AssertionError(f"the invocation failed: {result['body']}")
        return result["body"]

    def freeze(self) -> None:
        """Freeze the environment between invocations (SIGSTOP), as Lambda does once the response is posted."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Thaw it (SIGCONT)."""
        os.killpg(self.process.pid, signal.SIGCONT)

    def wait_init_error(self, timeout: float = 30) -> dict:
        """Wait for the runtime to report an init error; return it."""
        wait_until(lambda: self.api.init_errors, timeout, what="an init error")
        return self.api.init_errors[0]

    def stop(self) -> None:
        """Kill the runtime (thawed first) and stop the API."""
        if self.process and self.process.poll() is None:
            self.thaw()
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.api.stop()


_request_numbers = itertools.count(1)


def rest_event(method: str, path: str, source_ip: str, headers: dict | None = None, body: str | None = None) -> dict:
    """Return an API Gateway REST API event (payload 1.0, the proxy integration's)."""
    headers = {"Host": "abc123.execute-api.us-east-1.amazonaws.com", **(headers or {})}
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abcdef",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "requestId": f"rest-{next(_request_numbers)}",
            "accountId": "123456789012",
            "stage": "prod",
            "identity": {"sourceIp": source_ip, "userAgent": "test"},
            "path": f"/prod{path}",
            "protocol": "HTTP/1.1",
            "apiId": "abc123",
        },
        "body": body,
        "isBase64Encoded": False,
    }


def http_api_event(method: str, path: str, source_ip: str, headers: dict | None = None, body: str | None = None, url: bool = False) -> dict:
    """Return an API Gateway HTTP API event (payload 2.0); ``url``: a function URL's (the same shape, its own domain)."""
    domain = "abcdefghij.lambda-url.us-east-1.on.aws" if url else "abc123.execute-api.us-east-1.amazonaws.com"
    headers = {"host": domain, **{name.lower(): value for name, value in (headers or {}).items()}}
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous" if url else "123456789012",
            "apiId": "abcdefghij" if url else "abc123",
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": source_ip, "userAgent": "test"},
            "requestId": f"v2-{next(_request_numbers)}",
            "routeKey": "$default",
            "stage": "$default",
            "time": "06/Dec/2026:10:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = base64.b64encode(body.encode()).decode()
        event["isBase64Encoded"] = True  # function URLs and HTTP APIs send text bodies base64-encoded too
    return event


def alb_event(method: str, path: str, forwarded_for: str, headers: dict | None = None, body: str | None = None) -> dict:
    """Return an Application Load Balancer event (multi-value headers off): the client's address only in X-Forwarded-For."""
    headers = {
        "host": "ice-servers-123.us-east-1.elb.amazonaws.com",
        "x-forwarded-for": forwarded_for,
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
        **{name.lower(): value for name, value in (headers or {}).items()},
    }
    return {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/ice/0123"}},
        "httpMethod": method,
        "path": path,
        "queryStringParameters": {},
        "headers": headers,
        "body": body or "",
        "isBase64Encoded": False,
    }
