"""A loopback stand-in for the Hub API, enough for create_repo / upload_folder (regular, non-LFS uploads)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MockHub:
    """`user` / `orgs`: who the token belongs to (whoami); `token`: the only token accepted (None: any)."""

    def __init__(self, user: str = "someone", orgs: tuple[str, ...] = (), token: str | None = None):
        self.user, self.orgs, self.token = user, orgs, token
        self.whoami_calls = 0
        self.created_repos: list[str] = []
        self.uploaded: dict[str, bytes] = {}
        self.commits: list[str] = []
        self.commit_tokens: list[str] = []  # the bearer token of each commit request
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/api/whoami"):
                    hub.whoami_calls += 1
                    given = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    if hub.token is not None and given != hub.token:
                        return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                    orgs = [{"name": org, "type": "org"} for org in hub.orgs]
                    return self._reply(200, {"name": hub.user, "type": "user", "orgs": orgs})
                self._reply(404, {"error": "not found"})

            def do_HEAD(self):
                self.send_response(404)
                self.end_headers()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.startswith("/api/repos/create"):
                    request = json.loads(body)
                    repo_id = "/".join(filter(None, (request.get("organization"), request["name"])))
                    hub.created_repos.append(repo_id)
                    return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if self.path.startswith("/api/validate-yaml"):
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._reply(200, {"files": modes})
                if "/commit/" in self.path:
                    hub.commit_tokens.append(self.headers.get("Authorization", "").removeprefix("Bearer "))
                    for line in body.decode().splitlines():
                        entry = json.loads(line)
                        if entry.get("key") == "file":
                            value = entry["value"]
                            hub.uploaded[value["path"]] = base64.b64decode(value["content"])
                        elif entry.get("key") == "header":
                            hub.commits.append(entry["value"].get("summary", ""))
                    repo_id = self.path.split("/api/models/")[1].split("/commit/")[0]
                    commit_url = f"{hub.url}/{repo_id}/commit/{'0' * 40}"
                    return self._reply(200, {"commitOid": "0" * 40, "commitUrl": commit_url})
                return self._reply(404, {"error": f"unhandled {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MockHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
