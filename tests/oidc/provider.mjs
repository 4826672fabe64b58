// The certified OpenID provider (panva's oidc-provider) that tests/it/oidc.rs runs the
// proxy against, configured the way a strict standard server is: PKCE required, refresh
// tokens rotated on every use (a replayed one revokes the grant), short access tokens,
// introspection for the test's upstream. Sign-in is headless: every interaction is
// answered at once as user "jane" consenting to whatever was asked.
//
//   node tests/oidc/provider.mjs SETUP.json
//
// SETUP.json: { "access_ttl": seconds, "clients": [oidc-provider client metadata…] }.
// Listens on a free loopback port and prints one line, {"issuer":"http://127.0.0.1:PORT"},
// once it serves. GET /_test/stats answers what the token endpoint was asked (for the
// test's "no further token calls"): one entry per request, with client, grant type,
// status and OAuth error. Test-only: nothing here is a production configuration.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const setup = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accessTtl = setup.access_ttl ?? 10;

// The port first: the issuer (and every URL the provider hands out) contains it.
const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: setup.clients,
  pkce: { required: () => true },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    RefreshToken: 3600,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  scopes: ['openid', 'offline_access', 'email'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  // The id_token carries the email claim (what the proxy shows as the principal).
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['goto-auth-proxy-interop-test-cookie-key'] },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, email: `${sub}@example.com`, email_verified: true }),
  }),
});

// Why the provider refused something, on stderr (the test shows it when it fails).
for (const event of ['server_error', 'authorization.error', 'grant.error', 'introspection.error']) {
  provider.on(event, (_ctx, err) => console.error(`${event}: ${err?.message} ${err?.error_description ?? ''}`));
}

// The client a refused request claimed to be: its Basic user (raw), or its form client_id.
function claimedClient(ctx) {
  const basic = /^Basic (.+)$/i.exec(ctx.get('authorization'));
  if (basic) return Buffer.from(basic[1], 'base64').toString('utf8').split(':')[0];
  return ctx.oidc?.params?.client_id ?? null;
}

const tokenCalls = [];
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method === 'POST' && ctx.path === '/token') {
    tokenCalls.push({
      client: ctx.oidc?.client?.clientId ?? claimedClient(ctx),
      grant_type: ctx.oidc?.params?.grant_type ?? null,
      status: ctx.status,
      error: ctx.body?.error ?? null,
    });
  }
});

// Every prompt answered at once: "jane" signs in and consents to what was asked.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session, grantId } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: 'jane' } };
  } else {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url === '/_test/stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ token_calls: tokenCalls }));
  } else if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((e) => {
      res.statusCode = 500;
      res.end(String(e));
    });
  } else {
    callback(req, res);
  }
});

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
