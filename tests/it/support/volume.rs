//! A Secret volume laid out the way kubelet writes one, for tests of whatever reads the mounted
//! files (the credentials endpoint sidecar, SDKs through `credentials.process`).
//!
//! kubelet never rewrites a projected file in place. Each update goes into a fresh hidden
//! directory `..<timestamp>`; a symlink `..data` points at the current one and is replaced
//! atomically (a temporary symlink renamed over it); every key is a symlink `<key> ->
//! ..data/<key>`. So a reader that opened the old file keeps the old content, a reader that
//! opens the path afterwards gets the new file (a new inode), and nothing ever sees half a
//! file. [`SecretVolume`] reproduces exactly that, so a reader that only works with in-place
//! writes fails here.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ScratchDir;

/// The symlink naming the current payload directory.
const DATA_LINK: &str = "..data";
/// The temporary symlink renamed over [`DATA_LINK`].
const DATA_TMP_LINK: &str = "..data_tmp";

/// A kubelet-style Secret volume in a scratch directory (removed on drop).
pub struct SecretVolume {
    dir: ScratchDir,
    /// The payload directory `..data` points at now (its name only).
    current: Option<String>,
    /// The keys the volume shows now.
    keys: Vec<String>,
}

impl SecretVolume {
    /// An empty volume: no `..data`, no keys (a mount kubelet has not populated).
    pub fn empty(label: &str) -> SecretVolume {
        SecretVolume {
            dir: ScratchDir::new(label),
            current: None,
            keys: Vec::new(),
        }
    }

    /// A volume holding `files` (key → content), as kubelet first populates it.
    pub fn with<K: AsRef<str>, V: AsRef<[u8]>>(
        label: &str,
        files: impl IntoIterator<Item = (K, V)>,
    ) -> SecretVolume {
        let mut volume = SecretVolume::empty(label);
        volume.update(files);
        volume
    }

    /// The mount point (the directory holding the key symlinks).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where `key` is seen by a reader: `<mount>/<key>` (a symlink through `..data`).
    pub fn file(&self, key: &str) -> PathBuf {
        self.path().join(key)
    }

    /// Replaces the whole payload with `files`, as kubelet does when the Secret changes: a new
    /// `..<timestamp>` directory, an atomic swap of `..data`, symlinks for new keys, removal of
    /// the symlinks of keys that are gone, and removal of the old payload directory.
    pub fn update<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        files: impl IntoIterator<Item = (K, V)>,
    ) {
        let files: BTreeMap<String, Vec<u8>> = files
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_vec()))
            .collect();
        for key in files.keys() {
            assert!(
                !key.is_empty() && !key.starts_with("..") && !key.contains('/'),
                "{key:?} is not a Secret key kubelet would project"
            );
        }
        let root = self.path().to_path_buf();
        let payload = next_payload_name();
        let payload_dir = root.join(&payload);
        std::fs::create_dir(&payload_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", payload_dir.display()));
        for (key, content) in &files {
            let path = payload_dir.join(key);
            std::fs::write(&path, content)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        // The swap: a relative symlink to the new payload, renamed over `..data` (rename(2)
        // replaces the old link atomically).
        let tmp = root.join(DATA_TMP_LINK);
        let _ = std::fs::remove_file(&tmp);
        symlink(&payload, &tmp).unwrap_or_else(|e| panic!("linking {}: {e}", tmp.display()));
        std::fs::rename(&tmp, root.join(DATA_LINK))
            .unwrap_or_else(|e| panic!("swapping {DATA_LINK} in {}: {e}", root.display()));
        for key in files.keys() {
            let link = root.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new(DATA_LINK).join(key), &link)
                    .unwrap_or_else(|e| panic!("linking {}: {e}", link.display()));
            }
        }
        for key in &self.keys {
            if !files.contains_key(key) {
                let link = root.join(key);
                std::fs::remove_file(&link)
                    .unwrap_or_else(|e| panic!("removing {}: {e}", link.display()));
            }
        }
        if let Some(old) = self.current.replace(payload) {
            let old = root.join(old);
            std::fs::remove_dir_all(&old)
                .unwrap_or_else(|e| panic!("removing {}: {e}", old.display()));
        }
        self.keys = files.into_keys().collect();
    }

    /// Replaces one key's content, keeping the others (still a whole-payload swap).
    pub fn set(&mut self, key: &str, content: impl AsRef<[u8]>) {
        let mut files = self.contents();
        files.insert(key.to_string(), content.as_ref().to_vec());
        self.update(files);
    }

    /// Removes one key (its symlink goes, as when a Secret loses a data key).
    pub fn remove(&mut self, key: &str) {
        let mut files = self.contents();
        files.remove(key);
        self.update(files);
    }

    /// The current payload, read back through the key symlinks.
    pub fn contents(&self) -> BTreeMap<String, Vec<u8>> {
        self.keys
            .iter()
            .map(|key| {
                let path = self.file(key);
                let content = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                (key.clone(), content)
            })
            .collect()
    }
}

/// `..<UTC date and time>.<counter>`, unique within the test process like kubelet's
/// `..2006_01_02_15_04_05.<random>`.
fn next_payload_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S");
    format!("..{now}.{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A `credentials.json` document as the controller writes it (`credential_process` format).
pub fn credentials_json(
    access_key_id: &str,
    secret_access_key: &str,
    session_token: &str,
    expiration: jiff::Timestamp,
) -> Vec<u8> {
    let creds = kube_aws_iam_controller::domain::secret::Credentials {
        access_key_id: access_key_id.into(),
        secret_access_key: secret_access_key.into(),
        session_token: session_token.into(),
        expiration,
    };
    let data = kube_aws_iam_controller::domain::secret::encode(
        &creds,
        "arn:aws:iam::123456789012:role/test",
        1,
    );
    data.get(kube_aws_iam_controller::domain::secret::KEY_JSON)
        .cloned()
        .expect("the Secret codec writes credentials.json")
}
