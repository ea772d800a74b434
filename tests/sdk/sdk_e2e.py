"""Drive a running codestorage with the official Python SDK (`pierre-storage`), unmodified.

Run by the e2e test `sdk::the_python_sdk_drives_git_sync_end_to_end`, which starts the server
(TLS with its generated CA, `--github-url` pointing at a loopback upstream) and passes:

  CS_API          http://127.0.0.1:PORT         (REST)
  CS_STORAGE      127.0.0.1:TLSPORT             (git over https, as the SDK builds remote URLs)
  CS_KEY_FILE     the data dir's signing key    (PKCS#8 PEM; the SDK signs ES256 with it)
  CS_ORG          the data dir's organisation   (the SDK's `name`)
  CS_UPSTREAM     http://127.0.0.1:UPPORT/acme/widgets.git   (the GitHub repo, for git)
  CS_SCRATCH      a directory for clones
  GIT_SSL_CAINFO  the server's CA (git trusts the server's certificate)

Every step asserts; the script exits non-zero on the first failure, saying which step.
"""

import asyncio
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import httpx
from pierre_storage import GitStorage
from pierre_storage.auth import generate_jwt
from pierre_storage.webhook import validate_webhook

API = os.environ["CS_API"]
STORAGE = os.environ["CS_STORAGE"]
KEY = open(os.environ["CS_KEY_FILE"]).read()
ORG = os.environ["CS_ORG"]
UPSTREAM = os.environ["CS_UPSTREAM"]
SCRATCH = os.environ["CS_SCRATCH"]


def step(msg):
    print(f"== {msg}", flush=True)


def git(*args, cwd=None):
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def refs(url):
    lines = git("ls-remote", url).splitlines()
    return {
        r: sha
        for sha, r in (line.split("\t") for line in lines)
        if r.startswith("refs/heads/") or r.startswith("refs/tags/")
    }


async def eventually(what, check, timeout=60):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            value = await check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records webhook deliveries: (headers, raw body)."""

    deliveries = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


async def main():
    storage = GitStorage(
        {"name": ORG, "key": KEY, "api_base_url": API, "storage_base_url": STORAGE}
    )

    step("subscribe a webhook receiver (POST /api/v1/webhooks)")
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    org_token = generate_jwt(KEY, ORG, "org", ["repo:write"], 600)
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{API}/api/v1/webhooks",
            headers={"Authorization": f"Bearer {org_token}"},
            json={"url": hook_url, "events": ["push", "repo.sync.succeeded"]},
        )
    assert resp.status_code in (200, 201), resp.text
    secret = resp.json()["secret"]
    assert secret

    step("create a public GitHub mirror with base_repo")
    repo = await storage.create_repo(
        id="widgets",
        base_repo={"owner": "acme", "name": "widgets", "auth": {"auth_type": "public"}},
    )
    assert repo.id == "widgets"
    branches = await eventually(
        "the first sync", lambda: repo.list_branches(), timeout=60
    )
    names = [b["name"] for b in branches["branches"]]
    assert "main" in names, names

    step("get_remote_url, then git clone over TLS")
    url = await repo.get_remote_url()
    assert url.startswith(f"https://t:") and url.endswith(f"@{STORAGE}/widgets.git"), url
    clone = os.path.join(SCRATCH, "widgets")
    git("clone", "-q", url, clone)
    git("fsck", "--strict", cwd=clone)
    assert refs(url) == refs(UPSTREAM), (refs(url), refs(UPSTREAM))

    step("ephemeral push via get_ephemeral_remote_url; list_branches(ephemeral)")
    eph_url = await repo.get_ephemeral_remote_url()
    assert eph_url.endswith("/widgets+ephemeral.git"), eph_url
    with open(os.path.join(clone, "eph.txt"), "w") as f:
        f.write("ephemeral\n")
    git("add", "eph.txt", cwd=clone)
    git("-c", "user.name=sdk", "-c", "user.email=sdk@example.com", "commit", "-q", "-m", "eph", cwd=clone)
    eph_sha = git("rev-parse", "HEAD", cwd=clone).strip()
    git("push", "-q", eph_url, "HEAD:refs/heads/agent-1", cwd=clone)
    eph = await repo.list_branches(ephemeral=True)
    assert any(b["name"] == "agent-1" and b["head_sha"] == eph_sha for b in eph["branches"]), eph
    default = await repo.list_branches()
    assert not any(b["name"] == "agent-1" for b in default["branches"]), default
    assert "refs/heads/agent-1" not in refs(UPSTREAM), "ephemeral refs never go upstream"

    step("promote_ephemeral_branch")
    await repo.promote_ephemeral_branch(base_branch="agent-1")
    default = await repo.list_branches()
    assert any(b["name"] == "agent-1" and b["head_sha"] == eph_sha for b in default["branches"]), default

    step("pull_upstream after a new upstream commit")
    up = os.path.join(SCRATCH, "upstream-work")
    git("clone", "-q", UPSTREAM, up)
    with open(os.path.join(up, "new.txt"), "w") as f:
        f.write("new upstream commit\n")
    git("add", "new.txt", cwd=up)
    git("-c", "user.name=up", "-c", "user.email=up@example.com", "commit", "-q", "-m", "upstream", cwd=up)
    new_sha = git("rev-parse", "HEAD", cwd=up).strip()
    git("push", "-q", "origin", "HEAD:main", cwd=up)
    await repo.pull_upstream(ref="main")

    async def main_is_new():
        listed = await repo.list_branches()
        return any(b["name"] == "main" and b["head_sha"] == new_sha for b in listed["branches"])

    await eventually("main to follow the upstream", main_is_new)

    step("git credentials: create, update, delete")
    generic = await storage.create_repo(
        id="generic",
        base_repo={"provider": "gitea", "upstream_host": "127.0.0.1:9", "owner": "team", "name": "proj"},
    )
    created = await storage.create_git_credential(repo_id=generic.id, username="bot", password="s3cret-one")
    assert created["id"].startswith("ggc_"), created
    updated = await storage.update_git_credential(id=created["id"], username="bot", password="s3cret-two")
    assert updated["id"] == created["id"], updated
    await storage.delete_git_credential(id=created["id"])
    try:
        await storage.delete_git_credential(id=created["id"])
        raise AssertionError("deleting a deleted credential must fail")
    except Exception as e:  # noqa: BLE001 - the SDK raises ApiError
        assert "not found" in str(e).lower() or "404" in str(e), e

    step("validate our push webhooks with the SDK's own validator")

    async def pushes():
        found = []
        for headers, body in list(Receiver.deliveries):
            result = validate_webhook(body, headers, secret)
            assert result["valid"], (result, headers, body)
            if result["event_type"] == "push":
                found.append(result["payload"])
        return [p for p in found if p["ref"] == "refs/heads/agent-1"] or None

    agent_pushes = await eventually("push webhooks for agent-1", pushes)
    assert all(p["repository"]["url"] == "widgets" for p in agent_pushes), agent_pushes
    assert any(p["after"] == eph_sha for p in agent_pushes), agent_pushes
    receiver.shutdown()
    step("all SDK steps passed")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
