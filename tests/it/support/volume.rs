//! A Secret volume as kubelet maintains it, for tests of readers that must notice updates.
//!
//! kubelet's atomic writer never rewrites a file in place: it writes every key into a new
//! hidden timestamped directory, points a temporary symlink at it, renames that over `..data`
//! (the one atomic step), makes sure each visible name is a symlink `KEY -> ..data/KEY`, and
//! removes the previous directory. A reader holding an old file descriptor keeps the old
//! content; a reader that opens the path again gets the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

pub struct Volume {
    dir: PathBuf,
    generation: AtomicU64,
}

impl Volume {
    /// An empty volume directory at `dir` (created).
    pub fn new(dir: &Path) -> Volume {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Volume {
            dir: dir.to_path_buf(),
            generation: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The visible path of `key` (a symlink into `..data`).
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Replaces the whole content with `files`, as one atomic `..data` swap.
    pub fn write(&self, files: &BTreeMap<String, Vec<u8>>) {
        let n = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let stamp = format!(
            "..{}_{n:04}",
            jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S")
        );
        let new_dir = self.dir.join(&stamp);
        std::fs::create_dir(&new_dir).expect("create the timestamped directory");
        for (key, content) in files {
            std::fs::write(new_dir.join(key), content).expect("write a volume file");
        }
        let data = self.dir.join("..data");
        let old = std::fs::read_link(&data).ok();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, &data).expect("swap ..data");
        for key in files.keys() {
            let visible = self.dir.join(key);
            if std::fs::symlink_metadata(&visible).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &visible)
                    .expect("symlink a visible name");
            }
        }
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
    }

    /// Projects a Secret's data, as kubelet does for a `secret` volume.
    pub fn write_secret(&self, secret: &Secret) {
        let files = secret
            .data
            .as_ref()
            .map(|d| {
                d.iter()
                    .map(|(k, ByteString(v))| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.write(&files);
    }
}
