//! The webhook's serving certificate, re-read when its files change.
//!
//! cert-manager renews the certificate in place (a Secret update, which kubelet lands in the
//! pod's volume by swapping a `..data` symlink), so a webhook that read its pair once would
//! start failing every admission when the old certificate expires. Instead, the resolver looks
//! at the files' metadata during a TLS handshake, at most once per [`CHECK_EVERY`], and loads a
//! new pair when they changed. Checking at handshake time costs nothing while no client
//! connects and notices a new pair exactly when it would be served. A pair that does not load
//! (half-written, mismatched key, garbage) is logged once and the previous pair stays in
//! service.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// How often, at most, a handshake looks at the files' metadata.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a certificate/key pair could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("--tls-cert-file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("--tls-key-file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("--tls-key-file {key} does not belong to --tls-cert-file {cert}: {reason}")]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
}

/// A certificate chain and key from PEM files, parsed and checked to belong together.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let cert_err = |reason: String| CertError::Cert {
        path: cert_path.display().to_string(),
        reason,
    };
    let key_err = |reason: String| CertError::Key {
        path: key_path.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read(cert_path).map_err(|e| cert_err(e.to_string()))?;
    let key_pem = std::fs::read(key_path).map_err(|e| key_err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(describe_pem(&e, "CERTIFICATE")))?;
    if chain.is_empty() {
        return Err(cert_err("holds no PEM CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_err(describe_pem(&e, "PRIVATE KEY")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::Pair {
            cert: cert_path.display().to_string(),
            key: key_path.display().to_string(),
            reason: "the key does not match the certificate's public key".into(),
        },
        other => key_err(format!("unusable key or certificate: {other}")),
    })
}

/// A PEM error in words, without echoing the file's content.
fn describe_pem(e: &pem::Error, expected: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("holds no PEM {expected} block"),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        pem::Error::Io(e) => e.to_string(),
        _ => "not valid PEM".into(),
    }
}

/// What identifies a version of a file cheaply: a kubelet symlink swap changes the inode, an
/// in-place rewrite the modification time or length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: (u64, u64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: (meta.dev(), meta.ino()),
        })
    }
}

type PairStamp = (Option<FileStamp>, Option<FileStamp>);

struct State {
    current: Arc<CertifiedKey>,
    /// The files' stamps when `current` was read.
    loaded: PairStamp,
    /// Stamps of the last pair that failed to load (logged once, retried when they change).
    rejected: Option<PairStamp>,
    checked: Instant,
}

/// Called after each reload attempt (`true`: a new pair is in service), for metrics.
pub type ReloadHook = Box<dyn Fn(bool) + Send + Sync>;

/// The serving certificate resolver.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    state: RwLock<State>,
    on_reload: ReloadHook,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair once; start-up fails when it does not load.
    pub fn new(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
        on_reload: ReloadHook,
    ) -> Result<ReloadingCert, CertError> {
        let stamps = (FileStamp::of(&cert_path), FileStamp::of(&key_path));
        let current = Arc::new(load_pair(&cert_path, &key_path, &provider)?);
        Ok(ReloadingCert {
            cert_path,
            key_path,
            provider,
            state: RwLock::new(State {
                current,
                loaded: stamps,
                rejected: None,
                checked: Instant::now(),
            }),
            on_reload,
        })
    }

    /// The pair in service, after loading a changed one if a check is due.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        {
            let state = self.state.read().ok()?;
            if state.checked.elapsed() < CHECK_EVERY {
                return Some(state.current.clone());
            }
        }
        let mut state = self.state.write().ok()?;
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            self.reload_if_changed(&mut state);
        }
        Some(state.current.clone())
    }

    fn reload_if_changed(&self, state: &mut State) {
        let stamps = (
            FileStamp::of(&self.cert_path),
            FileStamp::of(&self.key_path),
        );
        if stamps == state.loaded || Some(stamps) == state.rejected {
            return;
        }
        match load_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(pair) => {
                state.current = Arc::new(pair);
                state.loaded = stamps;
                state.rejected = None;
                tracing::info!(
                    cert = %self.cert_path.display(),
                    "serving a new TLS certificate (the files changed)"
                );
                (self.on_reload)(true);
            }
            Err(e) => {
                state.rejected = Some(stamps);
                tracing::error!(
                    error = %e,
                    "the TLS certificate files changed but do not load; still serving the previous certificate"
                );
                (self.on_reload)(false);
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory (removed on drop), and the certificate and key paths in it.
    fn files() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = (d.path().join("tls.crt"), d.path().join("tls.key"));
        (d, c, k)
    }

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn served_der(r: &ReloadingCert) -> Vec<u8> {
        r.current().unwrap().cert[0].as_ref().to_vec()
    }

    /// Waits until the next handshake may look at the files again.
    fn let_check_come_due(r: &ReloadingCert) {
        r.state.write().unwrap().checked = Instant::now() - CHECK_EVERY;
    }

    #[test]
    fn start_up_errors_name_the_flag_and_never_echo_the_key() {
        let (d, c, k) = files();
        let (cert, key) = pair("a.example");
        let (other_cert, _) = pair("b.example");
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, "garbage").unwrap();
        let e = load_pair(&c, &k, &provider()).unwrap_err().to_string();
        assert!(e.starts_with("--tls-key-file "), "{e}");
        std::fs::write(&k, &key).unwrap();
        std::fs::write(&c, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        let e = load_pair(&c, &k, &provider()).unwrap_err().to_string();
        assert!(e.starts_with("--tls-cert-file "), "{e}");
        std::fs::write(&c, &other_cert).unwrap();
        let e = load_pair(&c, &k, &provider()).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!e.contains(&body[..16]));
        let missing = load_pair(&d.path().join("nope"), &k, &provider()).unwrap_err();
        assert!(missing.to_string().starts_with("--tls-cert-file "));
    }

    #[test]
    fn a_changed_pair_is_served_and_a_broken_one_is_not() {
        let (_d, c, k) = files();
        let (cert1, key1) = pair("one.example");
        std::fs::write(&c, &cert1).unwrap();
        std::fs::write(&k, &key1).unwrap();
        let reloads = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let (r2, f2) = (reloads.clone(), failures.clone());
        let r = ReloadingCert::new(
            c.clone(),
            k.clone(),
            provider(),
            Box::new(move |ok| {
                if ok { &r2 } else { &f2 }.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let first = served_der(&r);

        // Half a rotation: a new certificate beside the old key is refused, once.
        let (cert2, key2) = pair("two.example");
        std::fs::write(&c, &cert2).unwrap();
        let_check_come_due(&r);
        assert_eq!(served_der(&r), first);
        let_check_come_due(&r);
        assert_eq!(served_der(&r), first);
        assert_eq!(failures.load(Ordering::SeqCst), 1, "logged once");

        // The key arrives: the new pair is served.
        std::fs::write(&k, &key2).unwrap();
        let_check_come_due(&r);
        let second = served_der(&r);
        assert_ne!(second, first);
        assert_eq!(reloads.load(Ordering::SeqCst), 1);

        // Garbage keeps the second pair.
        std::fs::write(&c, "junk").unwrap();
        let_check_come_due(&r);
        assert_eq!(served_der(&r), second);

        // Between checks the files are not looked at.
        let (cert3, key3) = pair("three.example");
        std::fs::write(&c, &cert3).unwrap();
        std::fs::write(&k, &key3).unwrap();
        r.state.write().unwrap().checked = Instant::now();
        assert_eq!(served_der(&r), second);
        let_check_come_due(&r);
        assert_ne!(served_der(&r), second);
    }
}
