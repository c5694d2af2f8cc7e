//! Who a request comes from, and what it may do.
//!
//! Credentials: `Authorization: Bearer …` or `X-API-Key: …`. A bearer value
//! that looks like a JWT (three dot-separated parts) is verified as one
//! (HS256 secret, or RS256/ES256 keys from a JWKS file; `exp`/`nbf` checked,
//! `aud` mandatory, `iss` when configured); anything else is an API key,
//! looked up by its SHA-256 (the configuration holds only hashes; what a
//! lookup's timing could tell is a few bits of the hash of what was
//! presented, never of a key). Verified JWTs are remembered (bounded, until
//! they expire) so a client's every request does not pay a signature check.
//!
//! Authorization rules ([`Rules`]) say which pools a principal may reach and
//! which tools it may call; the first rule that matches the principal
//! applies.
//!
//! Each kind of credential names principals in its own name space: an API
//! key's principal is `key:NAME` (its configured name), a JWT's is
//! `jwt:ISSUER:SUBJECT`. That name is sealed into session ids, keys the
//! rate limits and goes to backends, so a JWT whose subject happens to equal
//! a key's name (or a subject from another issuer) shares nothing with it.
//! Rules name principals as configured: `key:NAME` / `jwt:SUBJECT`, or a
//! bare name when only one kind of credential is configured (with both, a
//! bare name could mean either, and such a file is refused).

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use ring::digest::{SHA256, digest};

use crate::config::{AuthConfig, AuthMode, JwtConfig};
use crate::reject::Reject;
use crate::token::now_secs;

/// Most verified JWTs remembered at once.
const MAX_CACHED_TOKENS: usize = 10_000;

/// The kind of credential a principal showed: each has its own name space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Anonymous,
    ApiKey,
    Jwt,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name in its credential's name space (`key:NAME`,
    /// `jwt:ISSUER:SUBJECT`; "" when anonymous): sealed into its sessions'
    /// ids, the key of its rate limits, sent to backends.
    pub name: String,
    pub credential: Credential,
    /// The name rules match: an API key's configured principal, a JWT's
    /// subject.
    pub subject: String,
    pub tier: String,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            name: String::new(),
            credential: Credential::Anonymous,
            subject: String::new(),
            tier: "anonymous".into(),
            scopes: Vec::new(),
        }
    }

    /// An API key's principal, named `key:NAME`.
    fn api_key(name: &str, tier: &str, scopes: &[String]) -> Self {
        Self {
            name: format!("key:{name}"),
            credential: Credential::ApiKey,
            subject: name.to_owned(),
            tier: tier.to_owned(),
            scopes: scopes.to_vec(),
        }
    }

    /// A JWT's principal, named `jwt:ISSUER:SUBJECT`; `%` and `:` in the
    /// issuer are percent-encoded, so the first `:` after it ends it and no
    /// (issuer, subject) pair reads as another.
    fn jwt(issuer: &str, subject: String, tier: String, scopes: Vec<String>) -> Self {
        let issuer = issuer.replace('%', "%25").replace(':', "%3A");
        Self {
            name: format!("jwt:{issuer}:{subject}"),
            credential: Credential::Jwt,
            subject,
            tier,
            scopes,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name.is_empty()
    }
}

/// The HS256 secret (keyed `None`) and the JWKS keys (by `kid`), each with
/// its one algorithm.
fn jwt_keys(j: &JwtConfig) -> anyhow::Result<HashMap<Option<String>, (DecodingKey, Algorithm)>> {
    let mut found = HashMap::new();
    if let Some(env) = &j.hs256_secret_env {
        let secret = std::env::var(env)
            .map_err(|_| anyhow::anyhow!("[auth.jwt] hs256_secret_env: {env} is not set"))?;
        if secret.len() < 32 {
            anyhow::bail!("{env}: an HS256 secret needs at least 32 bytes");
        }
        let key = DecodingKey::from_secret(secret.as_bytes());
        found.insert(None, (key, Algorithm::HS256));
    }
    if let Some(path) = &j.jwks_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a JWKS: {e}", path.display()))?;
        for key in &set.keys {
            let alg = match &key.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            let decoding = DecodingKey::from_jwk(key)
                .map_err(|e| anyhow::anyhow!("{}: unusable key: {e}", path.display()))?;
            found.insert(key.common.key_id.clone(), (decoding, alg));
        }
    }
    if found.is_empty() {
        anyhow::bail!("[auth.jwt] needs hs256_secret_env or jwks_file");
    }
    Ok(found)
}

impl Jwt {
    fn new(j: &JwtConfig) -> anyhow::Result<Self> {
        // One validation per key: jsonwebtoken checks a token against its
        // key's algorithm family, so each key allows exactly its own algorithm.
        let keys = jwt_keys(j)?
            .into_iter()
            .map(|(kid, (key, alg))| {
                let mut validation = Validation::new(alg);
                validation.set_audience(&[&j.audience]);
                validation.validate_nbf = true;
                validation.leeway = j.leeway_secs;
                match &j.issuer {
                    // jsonwebtoken checks `iss` only when the token has one:
                    // a configured issuer makes it required.
                    Some(iss) => {
                        validation.set_issuer(&[iss]);
                        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
                    }
                    None => validation.set_required_spec_claims(&["exp", "aud"]),
                }
                (kid, (key, alg, validation))
            })
            .collect();
        Ok(Self {
            keys,
            principal_claim: j.principal_claim.clone(),
            tier_claim: j.tier_claim.clone(),
            scope_claim: j.scope_claim.clone(),
        })
    }
}

struct Jwt {
    /// By `kid` (None: the HS256 secret, used for tokens without a known `kid`).
    keys: HashMap<Option<String>, (DecodingKey, Algorithm, Validation)>,
    principal_claim: String,
    tier_claim: Option<String>,
    scope_claim: String,
}

pub struct Authenticator {
    /// SHA-256 of each key → who it is (revoked keys are left out).
    keys: HashMap<[u8; 32], Arc<Principal>>,
    jwt: Option<Jwt>,
    /// Verified tokens by SHA-256, with their expiry.
    cache: DashMap<[u8; 32], (Arc<Principal>, u64)>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let mut keys = HashMap::new();
        for k in &config.keys {
            let hash = unhex(&k.sha256).ok_or_else(|| {
                anyhow::anyhow!("key of {}: sha256 must be 64 hex digits", k.principal)
            })?;
            if k.principal.is_empty() {
                anyhow::bail!("a key needs a principal name");
            }
            if !k.revoked {
                keys.insert(
                    hash,
                    Arc::new(Principal::api_key(&k.principal, &k.tier, &k.scopes)),
                );
            }
        }
        let jwt = config.jwt.as_ref().map(Jwt::new).transpose()?;
        Ok(Self {
            keys,
            jwt,
            cache: DashMap::new(),
        })
    }

    /// Whether any credential is configured (then pools default to `required`).
    pub fn configured(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    /// The credential a request carries, if any.
    fn credential(headers: &HeaderMap) -> Option<&str> {
        if let Some(v) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            let (scheme, value) = v.trim().split_once(' ')?;
            return scheme.eq_ignore_ascii_case("bearer").then(|| value.trim());
        }
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    /// Who the request comes from, as `mode` wants it.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        mode: AuthMode,
    ) -> Result<Arc<Principal>, Reject> {
        if mode == AuthMode::None {
            return Ok(Arc::new(Principal::anonymous()));
        }
        let Some(credential) = Self::credential(headers) else {
            return match mode {
                AuthMode::Required => Err(Reject::Unauthorized("credentials required")),
                _ => Ok(Arc::new(Principal::anonymous())),
            };
        };
        if credential.matches('.').count() == 2 && self.jwt.is_some() {
            return self.verify_jwt(credential);
        }
        let hash = sha256(credential.as_bytes());
        match self.keys.get(&hash) {
            Some(who) => Ok(Arc::clone(who)),
            None => Err(Reject::Unauthorized("invalid credentials")),
        }
    }

    fn verify_jwt(&self, token: &str) -> Result<Arc<Principal>, Reject> {
        let hash = sha256(token.as_bytes());
        let now = now_secs();
        if let Some(hit) = self.cache.get(&hash)
            && hit.1 > now
        {
            return Ok(Arc::clone(&hit.0));
        }
        let jwt = self
            .jwt
            .as_ref()
            .ok_or(Reject::Unauthorized("invalid credentials"))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Reject::Unauthorized("malformed token"))?;
        let (key, alg, validation) = jwt
            .keys
            .get(&header.kid)
            .or_else(|| jwt.keys.get(&None))
            .ok_or(Reject::Unauthorized("token signed with an unknown key"))?;
        if header.alg != *alg {
            return Err(Reject::Unauthorized(
                "token signed with an unexpected algorithm",
            ));
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, key, validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            Reject::Unauthorized(match e.kind() {
                K::ExpiredSignature => "token expired",
                K::ImmatureSignature => "token not valid yet",
                K::InvalidAudience => "token for another audience",
                K::InvalidIssuer => "token from another issuer",
                K::InvalidSignature => "token signature invalid",
                K::MissingRequiredClaim(c) => match c.as_str() {
                    "iss" => "token names no issuer",
                    "aud" => "token names no audience",
                    "exp" => "token has no expiry",
                    _ => "token lacks a required claim",
                },
                _ => "invalid token",
            })
        })?;
        let claims = data.claims;
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let subject = text(&jwt.principal_claim)
            .filter(|n| !n.is_empty())
            .ok_or(Reject::Unauthorized("token names no principal"))?;
        let principal = Arc::new(Principal::jwt(
            claims.get("iss").and_then(|v| v.as_str()).unwrap_or(""),
            subject,
            jwt.tier_claim
                .as_deref()
                .and_then(text)
                .unwrap_or_else(|| "default".into()),
            text(&jwt.scope_claim)
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        ));
        let exp = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(now);
        if self.cache.len() >= MAX_CACHED_TOKENS {
            self.cache.retain(|_, (_, e)| *e > now);
            if self.cache.len() >= MAX_CACHED_TOKENS {
                self.cache.clear();
            }
        }
        self.cache.insert(hash, (Arc::clone(&principal), exp));
        Ok(principal)
    }
}

/// What the matching rule lets a principal do.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pools: Option<Vec<String>>,
    allow_tools: Option<Vec<String>>,
    deny_tools: Vec<String>,
    required_scope: Option<String>,
}

impl Grant {
    pub fn may_reach(&self, pool: &str) -> bool {
        self.pools
            .as_ref()
            .is_none_or(|p| p.iter().any(|x| x == pool))
    }

    pub fn may_call(&self, tool: &str) -> bool {
        !self.deny_tools.iter().any(|t| t == tool)
            && self
                .allow_tools
                .as_ref()
                .is_none_or(|a| a.iter().any(|t| t == tool))
    }

    /// Whether some tools are off limits (then `tools/list` answers are filtered).
    pub fn restricts_tools(&self) -> bool {
        self.allow_tools.is_some() || !self.deny_tools.is_empty()
    }

    pub fn required_scope(&self) -> Option<&str> {
        self.required_scope.as_deref()
    }
}

/// Whom one rule applies to.
struct Matcher {
    /// No principals, scopes or tiers named: everybody.
    everybody: bool,
    /// By credential kind (`None`: the one kind configured) and name.
    principals: Vec<(Option<Credential>, String)>,
    scopes: Vec<String>,
    tiers: Vec<String>,
}

impl Matcher {
    fn matches(&self, who: &Principal) -> bool {
        self.everybody
            || self.principals.iter().any(|(kind, name)| {
                who.credential != Credential::Anonymous
                    && *name == who.subject
                    && kind.is_none_or(|k| k == who.credential)
            })
            || self.tiers.contains(&who.tier)
            || self.scopes.iter().any(|s| who.scopes.contains(s))
    }
}

pub struct Rules(Vec<(Matcher, Arc<Grant>)>);

impl Rules {
    /// The rules of `config`. A rule names an API key's principal as
    /// `key:NAME` and a JWT subject as `jwt:SUBJECT`; a bare name means the
    /// one kind of credential configured, and is refused when both are (it
    /// could match a key and a token subject that are different callers).
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let both = !config.keys.is_empty() && config.jwt.is_some();
        let mut out = Vec::with_capacity(config.rules.len());
        for r in &config.rules {
            let mut principals = Vec::with_capacity(r.principals.len());
            for p in &r.principals {
                let entry = if let Some(name) = p.strip_prefix("key:") {
                    (Some(Credential::ApiKey), name.to_owned())
                } else if let Some(sub) = p.strip_prefix("jwt:") {
                    (Some(Credential::Jwt), sub.to_owned())
                } else if both {
                    anyhow::bail!(
                        "[[auth.rules]] principals: \"{p}\" could name an API key's principal or a JWT subject; write \"key:{p}\" or \"jwt:{p}\""
                    );
                } else {
                    (None, p.clone())
                };
                principals.push(entry);
            }
            out.push((
                Matcher {
                    everybody: r.principals.is_empty() && r.scopes.is_empty() && r.tiers.is_empty(),
                    principals,
                    scopes: r.scopes.clone(),
                    tiers: r.tiers.clone(),
                },
                Arc::new(Grant {
                    pools: r.pools.clone(),
                    allow_tools: r.allow_tools.clone(),
                    deny_tools: r.deny_tools.clone(),
                    required_scope: r.required_scope.clone(),
                }),
            ));
        }
        Ok(Self(out))
    }

    /// The grant of the first rule matching `who` (everything, if none does).
    pub fn grant(&self, who: &Principal) -> Arc<Grant> {
        self.0
            .iter()
            .find(|(m, _)| m.matches(who))
            .map(|(_, g)| Arc::clone(g))
            .unwrap_or_default()
    }
}

/// A `tools/list` answer with the tools `grant` does not allow taken out;
/// `None` when the message is not such an answer or nothing is removed.
/// (A batch's answer, an array, has each of its `tools/list` answers filtered.)
pub fn filter_tools_list(message: &str, grant: &Grant) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(message).ok()?;
    let filter = |one: &mut serde_json::Value| {
        let Some(tools) = one
            .pointer_mut("/result/tools")
            .and_then(|t| t.as_array_mut())
        else {
            return false;
        };
        let before = tools.len();
        tools.retain(|t| {
            t.get("name")
                .and_then(|n| n.as_str())
                .is_some_and(|n| grant.may_call(n))
        });
        tools.len() != before
    };
    let changed = match &mut v {
        serde_json::Value::Array(all) => all.iter_mut().map(filter).fold(false, |a, b| a | b),
        one => filter(one),
    };
    changed.then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JwtConfig, KeyConfig, RuleConfig};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn config() -> AuthConfig {
        AuthConfig {
            keys: vec![
                KeyConfig {
                    principal: "ops".into(),
                    sha256: hex(&sha256(b"ops-key")),
                    tier: "gold".into(),
                    scopes: vec!["registry:write".into()],
                    revoked: false,
                },
                KeyConfig {
                    principal: "old".into(),
                    sha256: hex(&sha256(b"old-key")),
                    tier: "default".into(),
                    scopes: vec![],
                    revoked: true,
                },
            ],
            ..AuthConfig::default()
        }
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn api_keys_by_hash_either_header_and_revocation() {
        let a = Authenticator::new(&config()).unwrap();
        assert!(a.configured());
        let ops = a
            .authenticate(
                &headers("authorization", "Bearer ops-key"),
                AuthMode::Required,
            )
            .unwrap();
        assert_eq!((ops.name.as_str(), ops.tier.as_str()), ("key:ops", "gold"));
        assert_eq!(
            (ops.credential, ops.subject.as_str()),
            (Credential::ApiKey, "ops")
        );
        assert_eq!(
            a.authenticate(&headers("x-api-key", "ops-key"), AuthMode::Required)
                .unwrap()
                .name,
            "key:ops"
        );
        for bad in ["Bearer nope", "Bearer old-key", "Basic b3BzOm9wcw=="] {
            assert!(matches!(
                a.authenticate(&headers("authorization", bad), AuthMode::Required),
                Err(Reject::Unauthorized(_))
            ));
        }
        assert!(
            a.authenticate(&HeaderMap::new(), AuthMode::Required)
                .is_err()
        );
        assert!(
            a.authenticate(&HeaderMap::new(), AuthMode::Optional)
                .unwrap()
                .is_anonymous()
        );
        assert!(
            a.authenticate(&headers("x-api-key", "wrong"), AuthMode::Optional)
                .is_err(),
            "presented credentials must be valid"
        );
    }

    #[test]
    fn hs256_tokens_are_checked_and_remembered() {
        let secret = "an-hs256-secret-of-at-least-32-bytes!!";
        // SAFETY: tests in this module read this variable only.
        unsafe { std::env::set_var("AUTH_TEST_JWT_SECRET", secret) };
        let mut c = config();
        c.jwt = Some(JwtConfig {
            audience: "mcp".into(),
            issuer: Some("https://issuer.test".into()),
            hs256_secret_env: Some("AUTH_TEST_JWT_SECRET".into()),
            jwks_file: None,
            leeway_secs: 0,
            principal_claim: "sub".into(),
            tier_claim: Some("tier".into()),
            scope_claim: "scope".into(),
        });
        let a = Authenticator::new(&c).unwrap();
        let now = now_secs();
        let mint = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let good = mint(
            serde_json::json!({"sub":"alice","aud":"mcp","iss":"https://issuer.test","exp":now+60,"tier":"gold","scope":"a b"}),
        );
        let who = a
            .authenticate(
                &headers("authorization", &format!("Bearer {good}")),
                AuthMode::Required,
            )
            .unwrap();
        assert_eq!(who.name, "jwt:https%3A//issuer.test:alice");
        assert_eq!(
            (who.credential, who.subject.as_str()),
            (Credential::Jwt, "alice")
        );
        // A token whose subject is an API key's principal name is another principal.
        let ops_token = mint(
            serde_json::json!({"sub":"ops","aud":"mcp","iss":"https://issuer.test","exp":now+60}),
        );
        let by_token = a
            .authenticate(
                &headers("authorization", &format!("Bearer {ops_token}")),
                AuthMode::Required,
            )
            .unwrap();
        let by_key = a
            .authenticate(&headers("x-api-key", "ops-key"), AuthMode::Required)
            .unwrap();
        assert_ne!(by_token.name, by_key.name);
        assert_eq!(by_token.subject, by_key.subject);
        assert_eq!(who.scopes, vec!["a", "b"]);
        for (claims, why) in [
            (
                serde_json::json!({"sub":"a","aud":"mcp","iss":"https://issuer.test","exp":now-10}),
                "token expired",
            ),
            (
                serde_json::json!({"sub":"a","aud":"mcp","iss":"https://issuer.test","exp":now+60,"nbf":now+600}),
                "token not valid yet",
            ),
            (
                serde_json::json!({"sub":"a","aud":"other","iss":"https://issuer.test","exp":now+60}),
                "token for another audience",
            ),
            (
                serde_json::json!({"sub":"a","aud":"mcp","iss":"https://evil.test","exp":now+60}),
                "token from another issuer",
            ),
            (
                serde_json::json!({"sub":"a","iss":"https://issuer.test","exp":now+60}),
                "token names no audience",
            ),
            (
                serde_json::json!({"sub":"a","aud":"mcp","exp":now+60}),
                "token names no issuer",
            ),
        ] {
            let t = mint(claims);
            assert_eq!(
                a.authenticate(
                    &headers("authorization", &format!("Bearer {t}")),
                    AuthMode::Required
                ),
                Err(Reject::Unauthorized(why))
            );
        }
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub":"a","aud":"mcp","iss":"https://issuer.test","exp":now+60}),
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another"),
        )
        .unwrap();
        assert_eq!(
            a.authenticate(
                &headers("authorization", &format!("Bearer {forged}")),
                AuthMode::Required
            ),
            Err(Reject::Unauthorized("token signature invalid"))
        );
    }

    #[test]
    fn rules_grant_pools_and_tools_and_filter_listings() {
        let rules = Rules::new(&AuthConfig {
            rules: vec![
                RuleConfig {
                    principals: vec!["reader".into()],
                    allow_tools: Some(vec!["get_agent".into(), "list_agents".into()]),
                    pools: Some(vec!["registry".into()]),
                    required_scope: Some("registry:write".into()),
                    ..RuleConfig::default()
                },
                RuleConfig {
                    scopes: vec!["registry:write".into()],
                    deny_tools: vec!["delete_agent".into()],
                    ..RuleConfig::default()
                },
            ],
            ..config()
        })
        .unwrap();
        let reader = Principal::api_key("reader", "default", &[]);
        let g = rules.grant(&reader);
        assert!(g.may_call("get_agent") && !g.may_call("delete_agent"));
        assert!(g.may_reach("registry") && !g.may_reach("other"));
        let writer = Principal::api_key("w", "default", &["registry:write".into()]);
        let g2 = rules.grant(&writer);
        assert!(g2.may_call("register_agent") && !g2.may_call("delete_agent"));
        let nobody = rules.grant(&Principal::anonymous());
        assert!(
            nobody.may_call("delete_agent"),
            "no matching rule: everything"
        );
        let listing = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_agent"},{"name":"delete_agent"}]}}"#;
        let filtered = filter_tools_list(listing, &g).unwrap();
        assert!(filtered.contains("get_agent") && !filtered.contains("delete_agent"));
        assert!(filter_tools_list(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, &g).is_none());
    }

    #[test]
    fn rules_name_each_credential_kind_and_refuse_ambiguous_bare_names() {
        let rule = |who: &str| RuleConfig {
            principals: vec![who.into()],
            deny_tools: vec!["delete_agent".into()],
            ..RuleConfig::default()
        };
        let jwt = JwtConfig {
            audience: "mcp".into(),
            issuer: None,
            hs256_secret_env: None,
            jwks_file: None,
            leeway_secs: 0,
            principal_claim: "sub".into(),
            tier_claim: None,
            scope_claim: "scope".into(),
        };
        let both = |r: RuleConfig| AuthConfig {
            rules: vec![r],
            jwt: Some(jwt.clone()),
            ..config()
        };
        let err = Rules::new(&both(rule("ops")))
            .err()
            .expect("bare name refused");
        assert!(err.to_string().contains("key:ops"), "{err}");
        let key_ops = Principal::api_key("ops", "gold", &[]);
        let jwt_ops = Principal::jwt("https://i", "ops".into(), "gold".into(), vec![]);
        let by_key = Rules::new(&both(rule("key:ops"))).unwrap();
        assert!(!by_key.grant(&key_ops).may_call("delete_agent"));
        assert!(by_key.grant(&jwt_ops).may_call("delete_agent"));
        let by_jwt = Rules::new(&both(rule("jwt:ops"))).unwrap();
        assert!(by_jwt.grant(&key_ops).may_call("delete_agent"));
        assert!(!by_jwt.grant(&jwt_ops).may_call("delete_agent"));
        // One kind configured: a bare name is that kind's.
        let keys_only = Rules::new(&AuthConfig {
            rules: vec![rule("ops")],
            ..config()
        })
        .unwrap();
        assert!(!keys_only.grant(&key_ops).may_call("delete_agent"));
        assert!(
            keys_only
                .grant(&Principal::anonymous())
                .may_call("delete_agent")
        );
        // An issuer with ':' in it cannot make two principals read alike.
        assert_ne!(
            Principal::jwt("a:b", "c".into(), String::new(), vec![]).name,
            Principal::jwt("a", "b:c".into(), String::new(), vec![]).name
        );
    }
}
