// Drive a running codestorage with the official TypeScript SDK (@pierre/storage), unmodified.
//
// Run by the e2e test `sdk::the_typescript_sdk_drives_git_sync_end_to_end`, which copies this
// file beside a node_modules that has the SDK (ES modules resolve from the script's directory)
// and passes the same environment as tests/sdk/sdk_e2e.py: CS_API, CS_STORAGE, CS_KEY_FILE,
// CS_ORG, CS_UPSTREAM, CS_SCRATCH and GIT_SSL_CAINFO. Every step asserts; the first failure
// exits non-zero. Needs Node.js 18 or newer (global fetch, top-level await).
import { GitStorage, validateWebhook } from '@pierre/storage';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, sign } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const { CS_API: API, CS_STORAGE: STORAGE, CS_ORG: ORG, CS_UPSTREAM: UPSTREAM, CS_SCRATCH: SCRATCH } = process.env;
const KEY = readFileSync(process.env.CS_KEY_FILE, 'utf8');
const step = (m) => console.log(`== ${m}`);
const git = (args, cwd) => execFileSync('git', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
const refs = (url) => Object.fromEntries(git(['ls-remote', url]).split('\n').filter(Boolean).map((l) => l.split('\t'))
  .filter(([, r]) => r.startsWith('refs/heads/') || r.startsWith('refs/tags/')).map(([s, r]) => [r, s]));
const commit = (dir, file, text, msg) => { writeFileSync(join(dir, file), text); git(['add', file], dir);
  git(['-c', 'user.name=sdk', '-c', 'user.email=sdk@example.com', 'commit', '-q', '-m', msg], dir); return git(['rev-parse', 'HEAD'], dir).trim(); };
async function eventually(what, check, ms = 60_000) {
  let last;
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 200))) {
    try { const v = await check(); if (v) return v; } catch (e) { last = e; }
  }
  throw new Error(`timed out waiting for ${what} (last error: ${last})`);
}
const b64 = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
// ES256, as the SDK signs. For what the SDK has no call for: webhook subscriptions, and a
// mirror given by URL only (as `codestorage repo create --upstream URL` makes).
function token(repo, scopes) {
  const now = Math.floor(Date.now() / 1000), input = `${b64({ alg: 'ES256', typ: 'JWT' })}.${b64({ iss: ORG, sub: 'e2e', repo, scopes, iat: now, exp: now + 600 })}`;
  return `${input}.${sign('sha256', Buffer.from(input), { key: createPrivateKey(KEY), dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
}

const storage = new GitStorage({ name: ORG, key: KEY, apiBaseUrl: API, storageBaseUrl: STORAGE });
step('subscribe a webhook receiver (POST /api/v1/webhooks)');
const deliveries = [];
const receiver = http.createServer((req, res) => { let body = ''; req.on('data', (c) => (body += c));
  req.on('end', () => { deliveries.push([req.headers, body]); res.end(); }); });
await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
const sub = await fetch(`${API}/api/v1/webhooks`, { method: 'POST', headers: { Authorization: `Bearer ${token('org', ['repo:write'])}`, 'Content-Type': 'application/json' },
  body: JSON.stringify({ url: `http://127.0.0.1:${receiver.address().port}/hook`, events: ['push', 'repo.sync.succeeded'] }) });
assert.ok([200, 201].includes(sub.status), await sub.clone().text());
const { secret } = await sub.json();

step('createRepo: public GitHub mirror with baseRepo');
const repo = await storage.createRepo({ id: 'widgets', baseRepo: { owner: 'acme', name: 'widgets', auth: { authType: 'public' } } });
assert.equal(repo.id, 'widgets');
await eventually('the first sync', async () => (await repo.listBranches()).branches.some((b) => b.name === 'main'));

step('getRemoteURL, then git clone over TLS');
const url = await repo.getRemoteURL();
assert.ok(url.startsWith('https://t:') && url.endsWith(`@${STORAGE}/widgets.git`), url);
const clone = join(SCRATCH, 'widgets-ts');
git(['clone', '-q', url, clone]); git(['fsck', '--strict'], clone);
assert.deepEqual(refs(url), refs(UPSTREAM));

step('ephemeral push via getEphemeralRemoteURL; listBranches({ephemeral})');
const ephUrl = await repo.getEphemeralRemoteURL();
assert.ok(ephUrl.endsWith('/widgets+ephemeral.git'), ephUrl);
const ephSha = commit(clone, 'eph.txt', 'ephemeral\n', 'eph');
git(['push', '-q', ephUrl, 'HEAD:refs/heads/agent-1'], clone);
assert.ok((await repo.listBranches({ ephemeral: true })).branches.some((b) => b.name === 'agent-1' && b.headSha === ephSha));
assert.ok(!(await repo.listBranches()).branches.some((b) => b.name === 'agent-1'));
assert.ok(!('refs/heads/agent-1' in refs(UPSTREAM)), 'ephemeral refs never go upstream');

step('promote (createBranch baseIsEphemeral), then deleteBranch');
const promoted = await repo.createBranch({ baseBranch: 'agent-1', targetBranch: 'agent-1', baseIsEphemeral: true });
assert.equal(promoted.targetBranch, 'agent-1'); assert.equal(promoted.commitSha, ephSha);
assert.ok((await repo.listBranches()).branches.some((b) => b.name === 'agent-1' && b.headSha === ephSha));
assert.equal((await repo.deleteBranch({ name: 'agent-1', ephemeral: true })).ephemeral, true);

step('pullUpstream after a new upstream commit');
const up = join(SCRATCH, 'upstream-work-ts');
git(['clone', '-q', UPSTREAM, up]);
const newSha = commit(up, 'new-ts.txt', 'new upstream commit\n', 'upstream');
git(['push', '-q', 'origin', 'HEAD:main'], up);
await repo.pullUpstream({ ref: 'main' });
await eventually('main to follow the upstream', async () => (await repo.listBranches()).branches.some((b) => b.name === 'main' && b.headSha === newSha));

step('git credentials: create, update, delete');
const generic = await storage.createRepo({ id: 'generic', baseRepo: { provider: 'gitea', upstreamHost: '127.0.0.1:9', owner: 'team', name: 'proj' } });
const cred = await storage.createGitCredential({ repoId: generic.id, username: 'bot', password: 's3cret-one' });
assert.ok(cred.id.startsWith('ggc_'), cred.id);
assert.equal((await storage.updateGitCredential({ id: cred.id, username: 'bot', password: 's3cret-two' })).id, cred.id);
await storage.deleteGitCredential({ id: cred.id });
await assert.rejects(storage.deleteGitCredential({ id: cred.id }), /not found/i);

step('fork, findOne, listRepos, deleteRepo');
const fork = await storage.createRepo({ id: 'widgets-fork', baseRepo: { id: 'widgets', ref: 'main' } });
assert.equal(refs(await fork.getRemoteURL())['refs/heads/main'], newSha);
assert.equal((await storage.findOne({ id: 'widgets' }))?.defaultBranch, 'main');
assert.equal(await storage.findOne({ id: 'no-such-repo' }), null);
const byUrl = await fetch(`${API}/api/v1/repos`, { method: 'POST', headers: { Authorization: `Bearer ${token('byurl', ['repo:write'])}`, 'Content-Type': 'application/json' },
  body: JSON.stringify({ base_repo: { url: UPSTREAM } }) });
assert.equal(byUrl.status, 201, await byUrl.clone().text());
const all = (await storage.listRepos()).repos;
const listed = all.map((r) => r.repoId);
assert.ok(['widgets', 'generic', 'widgets-fork', 'byurl'].every((n) => listed.includes(n)), listed);
const byUrlListed = all.find((r) => r.repoId === 'byurl');
assert.equal(byUrlListed.baseRepo?.name, 'widgets', JSON.stringify(byUrlListed));
assert.equal((await storage.deleteRepo({ id: 'widgets-fork' })).repoId, 'widgets-fork');
assert.equal(await storage.findOne({ id: 'widgets-fork' }), null);

step("validate our push webhooks with the SDK's own validator");
const pushes = await eventually('push webhooks for agent-1', async () => {
  const found = [];
  for (const [headers, body] of deliveries) {
    const r = await validateWebhook(body, headers, secret);
    assert.ok(r.valid, JSON.stringify(r));
    if (r.eventType === 'push' && r.payload.ref === 'refs/heads/agent-1') found.push(r.payload);
  }
  return found.length ? found : null;
});
assert.ok(pushes.every((p) => p.repository.url === 'widgets') && pushes.some((p) => p.after === ephSha));
receiver.close();
step('all SDK steps passed');
