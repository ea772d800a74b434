#!/usr/bin/env bash
# Regenerate fuzz/seeds/<target>/ (git-ignored) from real git traffic.
#
# Real `git` clones, fetches and pushes (protocol v0 and v2; shallow, filtered, incremental,
# deletes, atomic pushes with push options) run against a local bare repository over file://,
# with --upload-pack/--receive-pack wrappers that save what the client sends. Split at flush
# packets, those streams are the request bodies git sends over smart HTTP. Token, header and
# REST body seeds are written here too. Usage: fuzz/seed.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$here/seeds
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
mkdir -p "$work/cap"
for t in pktline upload_pack_v0 upload_pack_v2 receive_pack pack_ingest jwt rest_json; do
    mkdir -p "$out/$t"
done

export GIT_CONFIG_NOSYSTEM=1 HOME=$work GIT_AUTHOR_NAME=fuzz GIT_AUTHOR_EMAIL=fuzz@example.com \
    GIT_COMMITTER_NAME=fuzz GIT_COMMITTER_EMAIL=fuzz@example.com
git config --global init.defaultBranch main
git config --global protocol.file.allow always

# Wrappers that record the client's side of each connection.
for svc in upload-pack receive-pack; do
    cat >"$work/$svc" <<EOF
#!/bin/sh
f="$work/cap/$svc-\$(echo "\${GIT_PROTOCOL:-version=0}" | tr -cd 'a-z0-9=')-\$(date +%s%N)"
tee "\$f" | git $svc "\$@"
EOF
    chmod +x "$work/$svc"
done
up=$work/up.git
fetch_v() { git -c protocol.version="$1" "${@:2}" --upload-pack="$work/upload-pack"; }

git init -q --bare "$up"
git -C "$up" config receive.advertisePushOptions true
git -C "$up" config uploadpack.allowFilter true
git -C "$up" config uploadpack.allowAnySHA1InWant true
git init -q "$work/src"
(
    cd "$work/src"
    for i in 1 2 3 4 5 6; do
        printf 'line %s\n' $(seq 1 "$i") >file.txt
        head -c $((i * 300)) /dev/urandom >"blob$i.bin"
        git add -A && GIT_COMMITTER_DATE="2024-01-0${i}T00:00:00Z" git commit -qm "commit $i"
        [ "$i" = 3 ] && git tag -a v1 -m "tag v1" && git branch topic
    done
    git push -q "$up" main topic v1
)

for v in 0 2; do
    fetch_v $v clone -q --no-local "file://$up" "$work/full$v"
    fetch_v $v clone -q --no-local --depth 2 "file://$up" "$work/shallow$v"
    fetch_v $v clone -q --no-local --filter=blob:none "file://$up" "$work/filter$v"
    fetch_v $v clone -q --no-local --shallow-since=2024-01-04 "file://$up" "$work/since$v"
    fetch_v $v clone -q --no-local --shallow-exclude=v1 "file://$up" "$work/exclude$v"
    git -C "$work/shallow$v" -c protocol.version=$v fetch -q --deepen=1 \
        --upload-pack="$work/upload-pack" origin
done
(
    cd "$work/src"
    echo more >>file.txt && git commit -qam "commit 7"
    git push -q "$up" main
)
for v in 0 2; do
    git -C "$work/full$v" -c protocol.version=$v fetch -q --upload-pack="$work/upload-pack" origin
    git -C "$work/full$v" -c protocol.version=$v ls-remote --upload-pack="$work/upload-pack" \
        origin 'refs/heads/*' >/dev/null
done
(
    cd "$work/full0"
    push() { git push -q --receive-pack="$work/receive-pack" "$@"; }
    git checkout -q -b feature origin/main
    echo feature >feature.txt && git add feature.txt && git commit -qm feature
    push origin feature
    echo again >>feature.txt && git commit -qam again
    push --atomic --push-option=ci.skip --push-option=reason=fuzz origin feature HEAD:refs/heads/other
    git commit -q --amend -m amended
    push --force origin feature
    push origin :refs/heads/other
    git tag -a v2 -m "tag v2" && push origin v2
)

# Whole packs as a fetch or a non-thin push sends them: deltas, a tag, binary blobs.
git -C "$work/src" pack-objects -q --all --stdout </dev/null >"$work/cap/pack-all"
git -C "$work/src" pack-objects -q --revs --stdout <<<"topic" >"$work/cap/pack-topic"

python3 - "$work/cap" "$out" <<'EOF'
import base64, hashlib, json, os, sys
cap, out = sys.argv[1], sys.argv[2]

def save(target, data):
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)

def requests(stream):
    """Split a pkt-line stream after each flush; the rest (a pack) is returned apart."""
    parts, start, i = [], 0, 0
    while i + 4 <= len(stream):
        head = stream[i:i + 4]
        if head == b"PACK":
            break
        try:
            n = int(head, 16)
        except ValueError:
            break
        i += 4 if n < 4 else n
        if n == 0:
            parts.append(stream[start:i])
            start = i
    if start < i:
        parts.append(stream[start:i])
    return parts, stream[i:]

for name in sorted(os.listdir(cap)):
    data = open(os.path.join(cap, name), "rb").read()
    if not data:
        continue
    if name.startswith("pack-"):
        save("pack_ingest", b"\x00" + data)
        save("pack_ingest", b"\x01" + data)
        continue
    save("pktline", data)
    parts, pack = requests(data)
    if name.startswith("upload-pack-version=2"):
        for p in parts:
            save("upload_pack_v2", p)
    elif name.startswith("upload-pack"):
        save("upload_pack_v0", data)
    else:
        save("receive_pack", data)
        if pack.startswith(b"PACK"):
            save("pack_ingest", b"\x00" + pack)
            save("pack_ingest", b"\x01" + pack)

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")

claims = [
    {"iss": "fuzz-org", "sub": "ci", "repo": "team/app", "scopes": ["git:read", "git:write"],
     "iat": 1799999000, "exp": 1800003600, "jti": "t1"},
    {"iss": "fuzz-org", "scopes": ["repo:write", "org:read"], "iat": 1799999000,
     "exp": 1800003600, "refs": [["main", ["create", "ff"]], ["refs/tags/*", None], ["*", []]]},
    {"iss": "fuzz-org", "repo": "org", "scopes": ["admin"], "ops": ["push", "delete"],
     "iat": 1799999000, "exp": 1800003600},
]
for c in claims:
    body = json.dumps(c).encode()
    save("jwt", b"\x02" + body)
    for alg in ("ES256", "RS256", "EdDSA", "none", "HS256"):
        header = json.dumps({"alg": alg, "typ": "JWT", "kid": "k1"}).encode()
        tok = b64(header) + b"." + b64(body) + b"." + b64(os.urandom(64))
        save("jwt", b"\x00" + tok)
        save("jwt", b"\x01" + b"Bearer " + tok)
        save("jwt", b"\x01" + b"Basic " + base64.b64encode(b"x-token:" + tok))

bodies = [
    (0, {"name": "team/app", "default_branch": "main"}),
    (0, {"name": "m", "base_repo": {"provider": "github", "owner": "octo", "name": "hello.git",
                                    "auth": {"auth_type": "public"}}}),
    (0, {"name": "m", "base_repo": {"provider": "gitlab", "owner": "group/sub", "name": "x",
                                    "upstream_host": "[::1]:8443", "default_branch": "dev"}}),
    (0, {"name": "m", "base_repo": {"provider": "sr.ht", "owner": "~me", "name": "x"}}),
    (0, {"name": "m", "base_repo": {"url": "https://git.example.com/a/b.git"}}),
    (0, {"name": "f", "base_repo": {"provider": "code", "name": "team/app", "operation": "fork",
                                    "ref": "main", "sha": "0" * 40, "auth": {"token": "x"}}}),
    (1, {"ref": "refs/heads/main", "after": "a" * 40}),
    (2, {"base_branch": "main", "target_branch": "feature/x", "base_is_ephemeral": True,
         "target_is_ephemeral": False, "force": True}),
    (3, {"name": "refs/heads/old", "ephemeral": True}),
    (4, {"repo_id": "team/app", "id": "cred_1", "username": "bot", "password": "ghp_x"}),
    (5, {"url": "https://hooks.example.com/x", "events": ["push", "repo.sync.failed"],
         "secret": "s3cret"}),
]
for kind, body in bodies:
    save("rest_json", bytes([kind]) + json.dumps(body).encode())
for kind in range(6):
    save("rest_json", bytes([kind]) + b"  ")
EOF
for t in "$out"/*; do
    printf '%-16s %3d seeds\n' "$(basename "$t")" "$(ls "$t" | wc -l)"
done
