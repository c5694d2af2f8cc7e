//! Gateway-issued session ids.
//!
//! A client never sees a backend's session id or address. The id we hand out
//! is an AES-256-GCM sealed token naming the pool, the backend address and
//! the backend's own session id, plus when it was issued. Any gateway replica
//! holding the same secret can open it and route the session with no shared
//! store. The key is derived once at start-up (HKDF-SHA256 over the
//! configured secret); per request there is only one AEAD open.
//!
//! Wire form: base64url(version ‖ nonce[12] ‖ ciphertext ‖ tag[16]), all
//! printable ASCII as the spec requires for `Mcp-Session-Id`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

const VERSION: u8 = 1;
const INFO: &[u8] = b"mcp-gateway session token v1";
/// Longest backend session id we will carry (rmcp uses 36-byte UUIDs).
pub const MAX_BACKEND_SESSION: usize = 256;
/// Longest token we will even try to open (bounds work on forged input).
pub const MAX_TOKEN_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    pub pool: u16,
    pub backend: SocketAddr,
    pub backend_session: String,
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
    rng: SystemRandom,
    max_age: Duration,
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl TokenSealer {
    /// Derives the AEAD key from `secret` (any length ≥ 16 bytes).
    pub fn new(secret: &[u8], max_age: Duration) -> Result<Self, TokenError> {
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
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
            max_age,
        })
    }

    /// A fresh random secret for a single gateway (sessions then do not
    /// survive a restart, and replicas cannot share them).
    pub fn random_secret() -> [u8; 32] {
        let mut secret = [0u8; 32];
        // SystemRandom only fails if the OS has no randomness at all.
        let _ = SystemRandom::new().fill(&mut secret);
        secret
    }

    pub fn seal(&self, session: &SessionRef) -> Option<String> {
        if session.backend_session.len() > MAX_BACKEND_SESSION {
            return None;
        }
        let mut plain = Vec::with_capacity(48 + session.backend_session.len());
        plain.extend_from_slice(&session.pool.to_be_bytes());
        plain.extend_from_slice(&session.issued_at.to_be_bytes());
        match session.backend.ip() {
            IpAddr::V4(ip) => {
                plain.push(4);
                plain.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                plain.push(6);
                plain.extend_from_slice(&ip.octets());
            }
        }
        plain.extend_from_slice(&session.backend.port().to_be_bytes());
        plain.extend_from_slice(session.backend_session.as_bytes());

        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION]),
                &mut plain,
            )
            .ok()?;
        let mut wire = Vec::with_capacity(1 + NONCE_LEN + plain.len());
        wire.push(VERSION);
        wire.extend_from_slice(&nonce);
        wire.extend_from_slice(&plain);
        Some(URL_SAFE_NO_PAD.encode(wire))
    }

    pub fn open(&self, token: &str) -> Result<SessionRef, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut wire = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if wire.len() < 1 + NONCE_LEN + 16 || wire[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let nonce = Nonce::try_assume_unique_for_key(&wire[1..1 + NONCE_LEN])
            .map_err(|_| TokenError::Malformed)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from([VERSION]), &mut wire[1 + NONCE_LEN..])
            .map_err(|_| TokenError::Forged)?;
        let session = decode(plain).ok_or(TokenError::Forged)?;
        let age = now_secs().saturating_sub(session.issued_at);
        if age > self.max_age.as_secs() {
            return Err(TokenError::Expired);
        }
        Ok(session)
    }

    pub fn issue(&self, pool: u16, backend: SocketAddr, backend_session: &str) -> Option<String> {
        self.seal(&SessionRef {
            pool,
            backend,
            backend_session: backend_session.to_owned(),
            issued_at: now_secs(),
        })
    }
}

fn decode(plain: &[u8]) -> Option<SessionRef> {
    let pool = u16::from_be_bytes(plain.get(0..2)?.try_into().ok()?);
    let issued_at = u64::from_be_bytes(plain.get(2..10)?.try_into().ok()?);
    let (ip, rest): (IpAddr, &[u8]) = match *plain.get(10)? {
        4 => {
            let o: [u8; 4] = plain.get(11..15)?.try_into().ok()?;
            (o.into(), plain.get(15..)?)
        }
        6 => {
            let o: [u8; 16] = plain.get(11..27)?.try_into().ok()?;
            (o.into(), plain.get(27..)?)
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?);
    let backend_session = std::str::from_utf8(rest.get(2..)?).ok()?.to_owned();
    Some(SessionRef {
        pool,
        backend: SocketAddr::new(ip, port),
        backend_session,
        issued_at,
    })
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

    #[test]
    fn round_trips_v4_and_v6() {
        let s = sealer();
        for addr in ["127.0.0.1:8091", "[::1]:9000"] {
            let t = s.issue(3, addr.parse().unwrap(), "5b1f-uuid").unwrap();
            assert!(t.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            let r = s.open(&t).unwrap();
            assert_eq!(r.backend, addr.parse().unwrap());
            assert_eq!(r.backend_session, "5b1f-uuid");
            assert_eq!(r.pool, 3);
        }
    }

    #[test]
    fn rejects_tampered_truncated_foreign_and_expired() {
        let s = sealer();
        let t = s.issue(0, "127.0.0.1:1".parse().unwrap(), "abc").unwrap();
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
        assert_eq!(s.open(&"A".repeat(600)), Err(TokenError::Malformed));
        let other =
            TokenSealer::new(b"another secret, also 32 bytes!!!", Duration::from_secs(60)).unwrap();
        assert_eq!(other.open(&t), Err(TokenError::Forged));
        let old = s
            .seal(&SessionRef {
                pool: 0,
                backend: "127.0.0.1:1".parse().unwrap(),
                backend_session: "x".into(),
                issued_at: now_secs() - 7200,
            })
            .unwrap();
        assert_eq!(s.open(&old), Err(TokenError::Expired));
    }

    #[test]
    fn two_sealers_with_one_secret_share_sessions() {
        let a = sealer();
        let b = sealer();
        let t = a.issue(1, "10.0.0.5:80".parse().unwrap(), "sess").unwrap();
        assert_eq!(b.open(&t).unwrap().backend_session, "sess");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// Whatever a client sends as a session id: an error or a session, never a panic.
        #[test]
        fn arbitrary_session_ids_never_panic(raw in "\\PC{0,600}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let s = sealer();
            let _ = s.open(&raw);
            let _ = s.open(&URL_SAFE_NO_PAD.encode(&bytes));
            let mut versioned = vec![VERSION];
            versioned.extend_from_slice(&bytes);
            proptest::prop_assert!(s.open(&URL_SAFE_NO_PAD.encode(&versioned)).is_err(), "forged bytes never open");
        }

        /// Seal → open gives back exactly what was sealed, for any backend
        /// session id up to the bound and any address.
        #[test]
        fn seal_then_open_round_trips(
            sid in "\\PC{0,80}",
            pool in proptest::prelude::any::<u16>(),
            v6 in proptest::prelude::any::<bool>(),
            ip in proptest::prelude::any::<[u8; 16]>(),
            port in proptest::prelude::any::<u16>(),
        ) {
            let s = sealer();
            let addr: SocketAddr = if v6 {
                SocketAddr::new(IpAddr::from(ip), port)
            } else {
                SocketAddr::new(IpAddr::from([ip[0], ip[1], ip[2], ip[3]]), port)
            };
            let token = s.issue(pool, addr, &sid).unwrap();
            proptest::prop_assert!(token.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            let opened = s.open(&token).unwrap();
            proptest::prop_assert_eq!(opened.backend_session, sid);
            proptest::prop_assert_eq!(opened.backend, addr);
            proptest::prop_assert_eq!(opened.pool, pool);
        }
    }
}
