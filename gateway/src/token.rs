//! Gateway-issued session ids.
//!
//! A client never sees a backend's session id or address. The id we hand out
//! is an AES-256-GCM sealed token naming the pool, the backend's identity
//! (a managed slot's name, else its address), the backend's own session id,
//! when it was issued, the principal it belongs to, and the client's
//! `initialize` parameters — so any gateway replica holding the same secret
//! can route the session with no shared store, and can re-create it on
//! another backend when its own is gone. The key is derived once at start-up
//! (HKDF-SHA256 over the configured secret); per request there is only one
//! AEAD open. A second, decrypt-only key (the one before a rotation) opens
//! the ids the current key refuses, so a key rotation ends no session.
//!
//! Legacy SSE session ids are sealed the same way under another kind (they
//! name the replica that holds the client's stream), so neither kind of id
//! opens as the other.
//!
//! Wire form: base64url(version ‖ nonce[12] ‖ ciphertext ‖ tag[16]), all
//! printable ASCII as the spec requires for `Mcp-Session-Id`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

const VERSION: u8 = 2;
const INFO: &[u8] = b"mcp-gateway session token v2";
/// The two kinds of sealed id (part of the authenticated data).
const KIND_SESSION: u8 = 1;
const KIND_LEGACY: u8 = 2;
const KIND_FEDERATED: u8 = 3;
/// Most members a federated id carries.
pub const MAX_MEMBERS: usize = 32;
/// Longest backend session id we will carry (rmcp uses 36-byte UUIDs).
pub const MAX_BACKEND_SESSION: usize = 256;
/// Longest `initialize` parameters sealed (the session layer cuts larger
/// ones down to what re-creating a session needs).
pub const MAX_INIT: usize = 2048;
/// Longest token we will even try to open (bounds work on forged input).
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a Streamable HTTP session id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    pub pool: u16,
    /// The backend's identity in the pool.
    pub backend: String,
    pub backend_session: String,
    pub issued_at: u64,
    /// Who the session belongs to ("" for anonymous clients).
    pub principal: String,
    /// The client's `initialize` params as JSON ("" if unknown).
    pub init: String,
    /// Unique per issued id (the AEAD nonce); keys per-process tables.
    pub nonce: [u8; NONCE_LEN],
}

/// What a federated session id says: one client session of a virtual
/// server, standing for one backend session per member that had one when
/// it was sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedRef {
    /// The virtual server's route index.
    pub route: u16,
    pub issued_at: u64,
    pub principal: String,
    /// The client's `initialize` params ("" if unknown).
    pub init: String,
    /// `(member index, backend identity, backend session id)`.
    pub members: Vec<(u16, String, String)>,
    pub nonce: [u8; NONCE_LEN],
}

/// What a legacy SSE session id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyRef {
    /// The replica holding the client's stream (its advertised address).
    pub owner: String,
    /// The session's key in the owner's table.
    pub id: String,
    pub issued_at: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed session id")]
    Malformed,
    #[error("session id failed authentication")]
    Forged,
    #[error("session id expired")]
    Expired,
}

pub struct TokenSealer {
    key: LessSafeKey,
    /// The key before the last rotation: it opens ids, never seals one, so
    /// rotating the key does not end the sessions sealed under the old one.
    previous: Option<LessSafeKey>,
    /// Ids opened with `previous` (when it stops rising, drop the key).
    opened_with_previous: AtomicU64,
    rng: SystemRandom,
    max_age: Duration,
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A little writer/reader for the sealed plaintext.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The AEAD key for `secret`: HKDF-SHA256, run once per key at start.
fn derive(secret: &[u8]) -> Result<LessSafeKey, TokenError> {
    if secret.len() < 16 {
        return Err(TokenError::Malformed);
    }
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"mcp-gateway");
    let prk = salt.extract(secret);
    let okm = prk
        .expand(&[INFO], Len(32))
        .map_err(|_| TokenError::Malformed)?;
    let mut key = [0u8; 32];
    okm.fill(&mut key).map_err(|_| TokenError::Malformed)?;
    let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| TokenError::Malformed)?;
    Ok(LessSafeKey::new(unbound))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn text(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

impl TokenSealer {
    /// Derives the AEAD key from `secret` (any length ≥ 16 bytes).
    pub fn new(secret: &[u8], max_age: Duration) -> Result<Self, TokenError> {
        Ok(Self {
            key: derive(secret)?,
            previous: None,
            opened_with_previous: AtomicU64::new(0),
            rng: SystemRandom::new(),
            max_age,
        })
    }

    /// Also opens ids sealed under `secret`, the key before a rotation (it
    /// never seals). Derived here, once, like the current key.
    pub fn with_previous(mut self, secret: &[u8]) -> Result<Self, TokenError> {
        self.previous = Some(derive(secret)?);
        Ok(self)
    }

    /// How many ids the previous key has opened since start.
    pub fn opened_with_previous(&self) -> u64 {
        self.opened_with_previous.load(Ordering::Relaxed)
    }

    /// A fresh random secret for a single gateway (sessions then do not
    /// survive a restart, and replicas cannot share them).
    pub fn random_secret() -> [u8; 32] {
        let mut secret = [0u8; 32];
        // SystemRandom only fails if the OS has no randomness at all.
        let _ = SystemRandom::new().fill(&mut secret);
        secret
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    fn seal_bytes(&self, kind: u8, mut plain: Vec<u8>) -> Option<(String, [u8; NONCE_LEN])> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION, kind]),
                &mut plain,
            )
            .ok()?;
        let mut wire = Vec::with_capacity(1 + NONCE_LEN + plain.len());
        wire.push(VERSION);
        wire.extend_from_slice(&nonce);
        wire.extend_from_slice(&plain);
        Some((URL_SAFE_NO_PAD.encode(wire), nonce))
    }

    fn open_bytes(&self, kind: u8, token: &str) -> Result<(Vec<u8>, [u8; NONCE_LEN]), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut wire = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if wire.len() < 1 + NONCE_LEN + 16 || wire[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = wire[1..1 + NONCE_LEN]
            .try_into()
            .map_err(|_| TokenError::Malformed)?;
        let open = |key: &LessSafeKey, sealed: &mut [u8]| {
            key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION, kind]),
                sealed,
            )
            .map(|plain| plain.to_vec())
        };
        if let Ok(plain) = open(&self.key, &mut wire[1 + NONCE_LEN..]) {
            return Ok((plain, nonce));
        }
        // Only ids the current key refused pay for a second try: a failed
        // open leaves its buffer unspecified, so decode the token again.
        let previous = self.previous.as_ref().ok_or(TokenError::Forged)?;
        let mut wire = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        let plain = open(previous, &mut wire[1 + NONCE_LEN..]).map_err(|_| TokenError::Forged)?;
        self.opened_with_previous.fetch_add(1, Ordering::Relaxed);
        Ok((plain, nonce))
    }

    fn check_age(&self, issued_at: u64) -> Result<(), TokenError> {
        if now_secs().saturating_sub(issued_at) > self.max_age.as_secs() {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// Seals a session; the returned ref carries the nonce it was sealed with.
    pub fn seal(&self, session: &SessionRef) -> Option<(String, SessionRef)> {
        if session.backend_session.len() > MAX_BACKEND_SESSION
            || session.backend.len() > 255
            || session.init.len() > MAX_INIT
            || session.principal.len() > 255
        {
            return None;
        }
        let mut plain = Vec::with_capacity(
            32 + session.backend.len() + session.backend_session.len() + session.init.len(),
        );
        plain.extend_from_slice(&session.pool.to_be_bytes());
        plain.extend_from_slice(&session.issued_at.to_be_bytes());
        put(&mut plain, session.backend.as_bytes());
        put(&mut plain, session.backend_session.as_bytes());
        put(&mut plain, session.principal.as_bytes());
        put(&mut plain, session.init.as_bytes());
        let (token, nonce) = self.seal_bytes(KIND_SESSION, plain)?;
        Some((
            token,
            SessionRef {
                nonce,
                ..session.clone()
            },
        ))
    }

    pub fn open(&self, token: &str) -> Result<SessionRef, TokenError> {
        let (plain, nonce) = self.open_bytes(KIND_SESSION, token)?;
        let mut r = Reader(&plain);
        let decoded = (|| {
            Some(SessionRef {
                pool: r.u16()?,
                issued_at: r.u64()?,
                backend: r.text()?,
                backend_session: r.text()?,
                principal: r.text()?,
                init: r.text()?,
                nonce,
            })
        })()
        .ok_or(TokenError::Forged)?;
        self.check_age(decoded.issued_at)?;
        Ok(decoded)
    }

    /// A new session id for a backend session just opened.
    pub fn issue(
        &self,
        pool: u16,
        backend: &str,
        backend_session: &str,
        principal: &str,
        init: &str,
    ) -> Option<(String, SessionRef)> {
        self.seal(&SessionRef {
            pool,
            backend: backend.to_owned(),
            backend_session: backend_session.to_owned(),
            issued_at: now_secs(),
            principal: principal.to_owned(),
            init: init.to_owned(),
            nonce: [0; NONCE_LEN],
        })
    }

    /// A new id for a federated session (its member sessions as opened).
    pub fn issue_federated(
        &self,
        route: u16,
        principal: &str,
        init: &str,
        members: &[(u16, &str, &str)],
    ) -> Option<(String, [u8; NONCE_LEN])> {
        let fits = |m: &(u16, &str, &str)| m.1.len() <= 255 && m.2.len() <= MAX_BACKEND_SESSION;
        if members.len() > MAX_MEMBERS
            || !members.iter().all(fits)
            || init.len() > MAX_INIT
            || principal.len() > 255
        {
            return None;
        }
        let mut plain = Vec::with_capacity(64 + init.len() + members.len() * 64);
        plain.extend_from_slice(&route.to_be_bytes());
        plain.extend_from_slice(&now_secs().to_be_bytes());
        put(&mut plain, principal.as_bytes());
        put(&mut plain, init.as_bytes());
        plain.extend_from_slice(&(members.len() as u16).to_be_bytes());
        for (index, backend, session) in members {
            plain.extend_from_slice(&index.to_be_bytes());
            put(&mut plain, backend.as_bytes());
            put(&mut plain, session.as_bytes());
        }
        self.seal_bytes(KIND_FEDERATED, plain)
    }

    pub fn open_federated(&self, token: &str) -> Result<FederatedRef, TokenError> {
        let (plain, nonce) = self.open_bytes(KIND_FEDERATED, token)?;
        let mut r = Reader(&plain);
        let decoded = (|| {
            let (route, issued_at) = (r.u16()?, r.u64()?);
            let (principal, init) = (r.text()?, r.text()?);
            let n = r.u16()? as usize;
            let mut members = Vec::with_capacity(n.min(MAX_MEMBERS));
            for _ in 0..n {
                members.push((r.u16()?, r.text()?, r.text()?));
            }
            Some(FederatedRef {
                route,
                issued_at,
                principal,
                init,
                members,
                nonce,
            })
        })()
        .ok_or(TokenError::Forged)?;
        self.check_age(decoded.issued_at)?;
        Ok(decoded)
    }

    /// A legacy SSE session id naming the replica that holds the stream.
    pub fn issue_legacy(&self, owner: &str, id: &str) -> Option<String> {
        let mut plain = Vec::with_capacity(16 + owner.len() + id.len());
        plain.extend_from_slice(&now_secs().to_be_bytes());
        put(&mut plain, owner.as_bytes());
        put(&mut plain, id.as_bytes());
        self.seal_bytes(KIND_LEGACY, plain).map(|(t, _)| t)
    }

    pub fn open_legacy(&self, token: &str) -> Result<LegacyRef, TokenError> {
        let (plain, _) = self.open_bytes(KIND_LEGACY, token)?;
        let mut r = Reader(&plain);
        let decoded = (|| {
            Some(LegacyRef {
                issued_at: r.u64()?,
                owner: r.text()?,
                id: r.text()?,
            })
        })()
        .ok_or(TokenError::Forged)?;
        self.check_age(decoded.issued_at)?;
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> TokenSealer {
        TokenSealer::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    const INIT: &str = r#"{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}"#;

    #[test]
    fn a_rotated_key_still_opens_ids_sealed_under_the_previous_one() {
        const OLD: &[u8] = b"the-old-session-key-0123456789";
        const NEW: &[u8] = b"the-new-session-key-0123456789";
        let day = Duration::from_secs(86_400);
        let old = TokenSealer::new(OLD, day).unwrap();
        let (session, sealed) = old.issue(0, "b", "s", "", INIT).unwrap();
        let legacy = old.issue_legacy("10.0.0.1:8080", "abc").unwrap();

        let rotated = TokenSealer::new(NEW, day)
            .unwrap()
            .with_previous(OLD)
            .unwrap();
        assert_eq!(rotated.open(&session).unwrap(), sealed);
        assert_eq!(rotated.open_legacy(&legacy).unwrap().id, "abc");
        assert_eq!(rotated.opened_with_previous(), 2);
        // new ids are sealed with the new key only: a gateway that has
        // dropped the old key opens them, one still on the old key alone does not
        let (fresh, _) = rotated.issue(0, "b", "s2", "", "").unwrap();
        assert_eq!(rotated.opened_with_previous(), 2);
        assert!(TokenSealer::new(NEW, day).unwrap().open(&fresh).is_ok());
        assert_eq!(old.open(&fresh), Err(TokenError::Forged));
        // without the previous key, old ids are refused
        let dropped = TokenSealer::new(NEW, day).unwrap();
        assert_eq!(dropped.open(&session), Err(TokenError::Forged));
        // an id neither key sealed is refused, and counts nothing
        let other = TokenSealer::new(b"a-third-key-nobody-has-0123", day).unwrap();
        let (forged, _) = other.issue(0, "b", "s", "", "").unwrap();
        assert_eq!(rotated.open(&forged), Err(TokenError::Forged));
        assert_eq!(rotated.opened_with_previous(), 2);
        // a previous key is held to the same length rule
        assert!(
            TokenSealer::new(NEW, day)
                .unwrap()
                .with_previous(b"short")
                .is_err()
        );
    }

    #[test]
    fn round_trips_identity_session_principal_and_init() {
        let s = sealer();
        for backend in ["registry-0", "127.0.0.1:8091", "[::1]:9000"] {
            let (t, sealed) = s.issue(3, backend, "5b1f-uuid", "key:ops", INIT).unwrap();
            assert!(t.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            let r = s.open(&t).unwrap();
            assert_eq!(r, sealed);
            assert_eq!(r.backend, backend);
            assert_eq!(r.backend_session, "5b1f-uuid");
            assert_eq!(r.principal, "key:ops");
            assert_eq!(r.init, INIT);
            assert_eq!(r.pool, 3);
        }
        let (a, _) = s.issue(0, "b", "s", "", "").unwrap();
        let (b, _) = s.issue(0, "b", "s", "", "").unwrap();
        assert_ne!(s.open(&a).unwrap().nonce, s.open(&b).unwrap().nonce);
    }

    #[test]
    fn rejects_tampered_truncated_foreign_expired_and_the_other_kind() {
        let s = sealer();
        let (t, _) = s.issue(0, "127.0.0.1:1", "abc", "", INIT).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            s.open(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(TokenError::Forged)
        );
        assert!(s.open(&t[..t.len() - 5]).is_err());
        assert_eq!(s.open("short"), Err(TokenError::Malformed));
        assert_eq!(s.open("!!!not base64!!!"), Err(TokenError::Malformed));
        assert_eq!(
            s.open(&"A".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::Malformed)
        );
        let other =
            TokenSealer::new(b"another secret, also 32 bytes!!!", Duration::from_secs(60)).unwrap();
        assert_eq!(other.open(&t), Err(TokenError::Forged));
        let (old, _) = s
            .seal(&SessionRef {
                pool: 0,
                backend: "127.0.0.1:1".into(),
                backend_session: "x".into(),
                issued_at: now_secs() - 7200,
                principal: String::new(),
                init: String::new(),
                nonce: [0; NONCE_LEN],
            })
            .unwrap();
        assert_eq!(s.open(&old), Err(TokenError::Expired));
        // a legacy id is not a session id, nor the reverse
        let legacy = s.issue_legacy("127.0.0.1:8080", "abc").unwrap();
        assert_eq!(s.open(&legacy), Err(TokenError::Forged));
        assert_eq!(s.open_legacy(&t), Err(TokenError::Forged));
        let l = s.open_legacy(&legacy).unwrap();
        assert_eq!((l.owner.as_str(), l.id.as_str()), ("127.0.0.1:8080", "abc"));
    }

    #[test]
    fn a_federated_id_round_trips_its_members_and_is_no_other_kind() {
        let s = sealer();
        let members = [(0u16, "registry-0", "s-1"), (2, "127.0.0.1:3001", "s-2")];
        let (token, nonce) = s.issue_federated(7, "key:alice", INIT, &members).unwrap();
        let opened = s.open_federated(&token).unwrap();
        assert_eq!(
            (
                opened.route,
                opened.principal.as_str(),
                opened.init.as_str()
            ),
            (7, "key:alice", INIT)
        );
        assert_eq!(
            opened.members[1],
            (2, "127.0.0.1:3001".to_owned(), "s-2".to_owned())
        );
        assert_eq!(opened.nonce, nonce);
        assert_eq!(
            s.open(&token),
            Err(TokenError::Forged),
            "not a pool session id"
        );
        let (plain, _) = s.issue(0, "b", "s", "", "").unwrap();
        assert_eq!(s.open_federated(&plain), Err(TokenError::Forged));
        let many: Vec<_> = (0..=MAX_MEMBERS as u16).map(|i| (i, "b", "s")).collect();
        assert!(s.issue_federated(7, "", "", &many).is_none(), "bounded");
    }

    #[test]
    fn two_sealers_with_one_secret_share_sessions() {
        let a = sealer();
        let b = sealer();
        let (t, _) = a.issue(1, "10.0.0.5:80", "sess", "", "").unwrap();
        assert_eq!(b.open(&t).unwrap().backend_session, "sess");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// Whatever a client sends as a session id: an error or a session, never a panic.
        #[test]
        fn arbitrary_session_ids_never_panic(raw in "\\PC{0,600}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let s = sealer();
            let _ = s.open(&raw);
            let _ = s.open_legacy(&raw);
            let _ = s.open(&URL_SAFE_NO_PAD.encode(&bytes));
            let mut versioned = vec![VERSION];
            versioned.extend_from_slice(&bytes);
            proptest::prop_assert!(s.open(&URL_SAFE_NO_PAD.encode(&versioned)).is_err(), "forged bytes never open");
        }

        /// Seal → open gives back exactly what was sealed.
        #[test]
        fn seal_then_open_round_trips(
            sid in "\\PC{0,80}",
            backend in "\\PC{0,60}",
            principal in "\\PC{0,60}",
            init in "\\PC{0,300}",
            pool in proptest::prelude::any::<u16>(),
        ) {
            let s = sealer();
            let (token, sealed) = s.issue(pool, &backend, &sid, &principal, &init).unwrap();
            proptest::prop_assert!(token.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            let opened = s.open(&token).unwrap();
            proptest::prop_assert_eq!(&opened, &sealed);
            proptest::prop_assert_eq!(opened.backend_session, sid);
            proptest::prop_assert_eq!(opened.backend, backend);
            proptest::prop_assert_eq!(opened.principal, principal);
            proptest::prop_assert_eq!(opened.init, init);
            proptest::prop_assert_eq!(opened.pool, pool);
        }
    }
}
