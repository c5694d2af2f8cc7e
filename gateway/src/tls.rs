//! The HTTPS listener's certificate: a development CA and server
//! certificate generated once into a directory and reused (so the local
//! stack serves HTTPS with a CA file clients can trust, `ca.pem`), and the
//! served certificate, reloaded from its files without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

pub struct DevTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn ensure_dev_tls(dir: &Path) -> Result<DevTls> {
    let paths = DevTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if paths.ca.exists() && paths.cert.exists() && paths.key.exists() {
        return Ok(paths);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mcp-gateway development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut leaf_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    std::fs::write(&paths.ca, ca_cert.pem())?;
    std::fs::write(&paths.cert, format!("{}{}", leaf.pem(), ca_cert.pem()))?;
    std::fs::write(&paths.key, leaf_key.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(paths)
}

/// The HTTPS listener's certificate, served from memory and read again from
/// its files when they change (checked on a timer, on SIGHUP and on
/// `POST /reload`). Each handshake takes the current one; connections
/// already open keep theirs. A file pair that does not load leaves the
/// served certificate as it was.
pub struct ServedCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// What the files looked like when last loaded (only the reloader writes it).
    stamp: std::sync::Mutex<Option<Stamp>>,
}

/// A file pair's identity: inode, size and modification time of each
/// (through symlinks, as Kubernetes swaps a Secret volume's `..data`).
type Stamp = [(u64, u64, i64, i64); 2];

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ServedCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>> {
        pingora::tls::install_default_crypto_provider();
        let stamp = stamp(cert, key).ok();
        let current = read_pair(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(current),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// Loads the files again if they changed since the last load.
    /// `Ok(true)`: a new certificate is served.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = stamp(&self.cert, &self.key)?;
        let last = *self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if last == Some(now) {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Loads the files again, whatever their stamp says.
    pub fn reload(&self) -> Result<()> {
        // Stamp first: a file replaced while it is read shows as changed next time.
        let now = stamp(&self.cert, &self.key).ok();
        let pair = read_pair(&self.cert, &self.key)?;
        self.current.store(Arc::new(pair));
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now;
        tracing::info!(cert = %self.cert.display(), "TLS certificate loaded");
        Ok(())
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn stamp(cert: &Path, key: &Path) -> Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| -> Result<(u64, u64, i64, i64)> {
        let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        Ok((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    };
    Ok([one(cert)?, one(key)?])
}

/// A certificate chain and its private key, checked to belong together.
fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let (cert_s, key_s) = (
        cert.to_str().context("certificate path")?,
        key.to_str().context("key path")?,
    );
    let (chain, private) = pingora::tls::load_certs_and_key_files(cert_s, key_s)
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", cert.display()))?
        .with_context(|| {
            format!(
                "{} or {} holds no certificate or no key",
                cert.display(),
                key.display()
            )
        })?;
    let provider = CryptoProvider::get_default().context("no TLS crypto provider")?;
    CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| anyhow::anyhow!("{} and {}: {e}", cert.display(), key.display()))
}
