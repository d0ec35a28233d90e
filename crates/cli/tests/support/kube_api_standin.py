"""A stand-in for the few Kubernetes API calls `deploy` makes, for tests on
machines where no API server can run (Debian ships none, and nothing here can
be downloaded). It keeps objects in memory, answers server-side apply
(PATCH with application/apply-patch+yaml) as the API server does for the
fields modelship reads back, reports a Deployment rolled out once applied
(or stuck past its progress deadline when its memory limit is 13Mi, standing
in for a crash-looping pod), and records every request as a JSON line.

usage: kube_api_standin.py PORT_FILE LOG_FILE
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

port_file, log_file = sys.argv[1], sys.argv[2]
objects = {}  # path -> object


def failing(obj):
    for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        if c.get("resources", {}).get("limits", {}).get("memory") == "13Mi":
            return True
    return False


def with_status(obj):
    if obj.get("kind") != "Deployment":
        return obj
    obj = json.loads(json.dumps(obj))
    n = obj.get("spec", {}).get("replicas", 1)
    gen = obj["metadata"].get("generation", 1)
    if failing(obj):
        obj["status"] = {"observedGeneration": gen, "replicas": n + 1, "updatedReplicas": 1,
                         "availableReplicas": n, "conditions": [{
                             "type": "Progressing", "status": "False",
                             "reason": "ProgressDeadlineExceeded",
                             "message": "ReplicaSet has timed out progressing."}]}
    else:
        obj["status"] = {"observedGeneration": gen, "replicas": n, "updatedReplicas": n,
                         "availableReplicas": n, "readyReplicas": n}
    return obj


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def record(self, body=None):
        url = urlsplit(self.path)
        with open(log_file, "a") as f:
            f.write(json.dumps({"method": self.command, "path": url.path,
                                "query": parse_qs(url.query),
                                "content_type": self.headers.get("content-type"),
                                "body": body}) + "\n")
        return url.path

    def answer(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self, path):
        self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": "NotFound", "code": 404, "message": f"{path} not found"})

    def do_PATCH(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        path = self.record(body)
        if self.headers.get("content-type") != "application/apply-patch+yaml":
            return self.answer(415, {"kind": "Status", "code": 415, "message": "not an apply patch"})
        old = objects.get(path)
        gen = (old or {}).get("metadata", {}).get("generation", 0)
        if old is None or old.get("spec") != body.get("spec"):
            gen += 1
        body.setdefault("metadata", {})["generation"] = gen
        objects[path] = body
        self.answer(200, with_status(body))

    def do_GET(self):
        path = self.record()
        if path in objects:
            return self.answer(200, with_status(objects[path]))
        self.not_found(path)

    def do_DELETE(self):
        path = self.record()
        if objects.pop(path, None) is None:
            return self.not_found(path)
        self.answer(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
