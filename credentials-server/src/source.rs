//! The credentials file and what was last read from it. Nothing watches the file: each request
//! `stat`s it (following kubelet's `..data` symlink) and re-reads it only when its identity
//! changed, so an idle server does nothing at all and a swap is served on the next request.

use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::json::{self, Value};
use crate::time::Timestamp;

/// A credentials file larger than this is not a credential_process document; reading it
/// whole would only cost memory in every pod.
pub const MAX_FILE_LEN: u64 = 64 * 1024;

/// Usable credentials, with the answer already rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The container-credentials document.
    pub body: String,
    pub expiration: Timestamp,
    /// `expiration` as served (UTC, whole seconds).
    pub expiration_text: String,
}

/// Why there are no credentials to serve. Messages name the file and the problem, never any
/// of the file's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Missing(String),
    Unreadable(String),
    Invalid(String),
    Expired(String),
}

impl Problem {
    pub fn message(&self) -> &str {
        match self {
            Problem::Missing(m)
            | Problem::Unreadable(m)
            | Problem::Invalid(m)
            | Problem::Expired(m) => m,
        }
    }
}

/// What tells one version of the file from the next: kubelet's swap yields a new inode, an
/// in-place writer a new modification time or length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

impl Identity {
    fn of(metadata: &Metadata) -> Identity {
        Identity {
            dev: metadata.dev(),
            ino: metadata.ino(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
            len: metadata.len(),
        }
    }
}

pub struct Source {
    path: PathBuf,
    cache: Mutex<Cache>,
}

struct Cache {
    /// Identity of the file `loaded` came from; `None` when it could not be `stat`ed (so the
    /// next request tries again).
    identity: Option<Identity>,
    loaded: Result<Loaded, Problem>,
    /// The last problem written to the log, so a broken mount logs once, not per request.
    logged: Option<Problem>,
}

impl Source {
    pub fn new(path: PathBuf) -> Source {
        Source {
            path,
            cache: Mutex::new(Cache {
                identity: None,
                loaded: Err(Problem::Missing(String::new())),
                logged: None,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials to serve now: re-read if the file changed, and checked for expiry.
    /// Logs (to stderr) each load and each new problem.
    pub fn current(&self) -> Result<Loaded, Problem> {
        self.current_at(Timestamp::now(), &mut |line| {
            eprintln!("credentials-server: {line}")
        })
    }

    pub(crate) fn current_at(
        &self,
        now: Timestamp,
        log: &mut dyn FnMut(&str),
    ) -> Result<Loaded, Problem> {
        // A poisoned lock only means a panic elsewhere; the cache itself is always whole.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match std::fs::metadata(&self.path).map(|m| Identity::of(&m)) {
            Ok(identity) if cache.identity == Some(identity) => {}
            Ok(_) => {
                let (identity, loaded) = read(&self.path);
                if let Ok(credentials) = &loaded {
                    log(&format!(
                        "loaded credentials expiring at {}",
                        credentials.expiration_text
                    ));
                    cache.logged = None;
                }
                cache.identity = identity;
                cache.loaded = loaded;
            }
            Err(e) => {
                cache.identity = None;
                cache.loaded = Err(io_problem(&self.path, &e));
            }
        }
        let result = match &cache.loaded {
            Ok(credentials) if credentials.expiration <= now => Err(Problem::Expired(format!(
                "the credentials in {} expired at {}; the Secret has not been refreshed since",
                self.path.display(),
                credentials.expiration_text
            ))),
            other => other.clone(),
        };
        if let Err(problem) = &result
            && cache.logged.as_ref() != Some(problem)
        {
            log(problem.message());
            cache.logged = Some(problem.clone());
        }
        result
    }
}

fn io_problem(path: &Path, e: &std::io::Error) -> Problem {
    if e.kind() == std::io::ErrorKind::NotFound {
        Problem::Missing(format!(
            "{} does not exist (is the Secret mounted, and does it have the key \
             credentials.json?)",
            path.display()
        ))
    } else {
        Problem::Unreadable(format!("cannot read {}: {e}", path.display()))
    }
}

/// Reads and checks the file. The identity comes from the opened file, so it always belongs
/// to the content read even if kubelet swaps the volume in between.
fn read(path: &Path) -> (Option<Identity>, Result<Loaded, Problem>) {
    let opened = File::open(path).and_then(|file| Ok((file.metadata()?, file)));
    let (metadata, file) = match opened {
        Ok(opened) => opened,
        Err(e) => return (None, Err(io_problem(path, &e))),
    };
    let identity = Some(Identity::of(&metadata));
    if !metadata.is_file() {
        let problem = Problem::Invalid(format!("{} is not a regular file", path.display()));
        return (identity, Err(problem));
    }
    if metadata.len() > MAX_FILE_LEN {
        let problem = Problem::Invalid(format!(
            "{} is larger than {MAX_FILE_LEN} bytes: not a credential_process document",
            path.display()
        ));
        return (identity, Err(problem));
    }
    let mut content = Vec::with_capacity(metadata.len() as usize);
    if let Err(e) = (&file).take(MAX_FILE_LEN).read_to_end(&mut content) {
        return (None, Err(io_problem(path, &e)));
    }
    let loaded = parse(&content).map_err(|what| {
        Problem::Invalid(format!(
            "{} is not a usable credential_process document: {what}",
            path.display()
        ))
    });
    (identity, loaded)
}

/// Checks a credential_process document and renders the container-credentials answer.
/// `Err` says what is wrong in words of its own, never quoting the input.
pub fn parse(content: &[u8]) -> Result<Loaded, String> {
    let document = match json::parse(content) {
        Ok(document @ Value::Object(_)) => document,
        _ => return Err("it is not a JSON object".into()),
    };
    if !matches!(document.get("Version"), Some(Value::Number(n)) if n == "1") {
        return Err("\"Version\" is not 1".into());
    }
    let field = |name: &str| -> Result<&str, String> {
        match document.get(name).and_then(Value::as_str) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(format!("{name:?} is missing, empty or not a string")),
        }
    };
    let access_key_id = field("AccessKeyId")?;
    let secret_access_key = field("SecretAccessKey")?;
    let session_token = field("SessionToken")?;
    let expiration = Timestamp::parse(field("Expiration")?)
        .ok_or_else(|| "\"Expiration\" is not an RFC 3339 time".to_string())?;
    let expiration_text = expiration.to_rfc3339();
    let body = json::object(&[
        ("Code", "Success"),
        ("Type", "AWS-HMAC"),
        ("AccessKeyId", access_key_id),
        ("SecretAccessKey", secret_access_key),
        ("Token", session_token),
        ("Expiration", &expiration_text),
    ]);
    Ok(Loaded {
        body,
        expiration,
        expiration_text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const DOCUMENT: &str = r#"{"Version":1,"AccessKeyId":"AKID","SecretAccessKey":"SAK","SessionToken":"ST","Expiration":"2026-11-26T23:00:00.25+01:00"}"#;

    #[test]
    fn renders_the_endpoint_document() {
        let loaded = parse(DOCUMENT.as_bytes()).unwrap();
        assert_eq!(
            loaded.body,
            r#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"AKID","SecretAccessKey":"SAK","Token":"ST","Expiration":"2026-11-26T22:00:00Z"}"#
        );
        assert_eq!(loaded.expiration_text, "2026-11-26T22:00:00Z");
        assert_eq!(loaded.expiration.nanos, 250_000_000);
        // Other members (the controller may add some) are ignored; values are escaped.
        let loaded = parse(
            br#"{"Extra":{"x":[1]},"Version":1,"AccessKeyId":"A\"K","SecretAccessKey":"S\\K","SessionToken":"S\/T","Expiration":"2026-11-26T23:00:00Z"}"#,
        )
        .unwrap();
        let body = json::parse(loaded.body.as_bytes()).unwrap();
        assert_eq!(
            body.get("AccessKeyId").and_then(Value::as_str),
            Some("A\"K")
        );
        assert_eq!(
            body.get("SecretAccessKey").and_then(Value::as_str),
            Some("S\\K")
        );
        assert_eq!(body.get("Token").and_then(Value::as_str), Some("S/T"));
    }

    #[test]
    fn errors_name_the_field_not_the_value() {
        #[rustfmt::skip]
        let cases: [(&str, &[u8]); 9] = [
            ("not a JSON object", b"not json SECRETVALUE"),
            ("not a JSON object", br#"["SECRETVALUE"]"#),
            ("not a JSON object", br#"{"Version":1,"AccessKeyId":"SECRETVALUE""#),
            ("\"Version\" is not 1", br#"{"Version":2,"AccessKeyId":"SECRETVALUE"}"#),
            ("\"Version\" is not 1", br#"{"Version":1.0,"AccessKeyId":"SECRETVALUE"}"#),
            ("\"Version\" is not 1", br#"{"Version":"1","AccessKeyId":"SECRETVALUE"}"#),
            ("\"SessionToken\"", br#"{"Version":1,"AccessKeyId":"SECRETVALUE","SecretAccessKey":"SECRETVALUE"}"#),
            ("\"SecretAccessKey\"", br#"{"Version":1,"AccessKeyId":"SECRETVALUE","SecretAccessKey":7,"SessionToken":"x","Expiration":"x"}"#),
            ("\"Expiration\" is not an RFC 3339 time", br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"B","SessionToken":"SECRETVALUE","Expiration":"SECRETVALUE"}"#),
        ];
        for (expected, input) in cases {
            let e = parse(input).err().unwrap();
            assert!(e.contains(expected), "{e}");
            assert!(!e.contains("SECRETVALUE"), "{e}");
        }
        let e = parse(br#"{"Version":1,"AccessKeyId":"","SecretAccessKey":"B","SessionToken":"C","Expiration":"2026-11-26T23:00:00Z"}"#).err().unwrap();
        assert!(e.contains("\"AccessKeyId\" is missing, empty"), "{e}");
    }

    /// A temporary kubelet-style volume: `..<n>/credentials.json`, `..data -> ..<n>`,
    /// `credentials.json -> ..data/credentials.json`.
    struct Volume(PathBuf);

    impl Volume {
        fn new(name: &str) -> Volume {
            let dir = std::env::temp_dir().join(format!(
                "credentials-server-unit-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            symlink("..data/credentials.json", dir.join("credentials.json")).unwrap();
            Volume(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join("credentials.json")
        }

        fn swap(&self, n: u32, content: &str) {
            let payload = format!("..{n:04}");
            std::fs::create_dir(self.0.join(&payload)).unwrap();
            std::fs::write(self.0.join(&payload).join("credentials.json"), content).unwrap();
            let tmp = self.0.join("..data_tmp");
            symlink(&payload, &tmp).unwrap();
            std::fs::rename(&tmp, self.0.join("..data")).unwrap();
        }
    }

    impl Drop for Volume {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn document(key: &str, expiration: &str) -> String {
        format!(
            r#"{{"Version":1,"AccessKeyId":"{key}","SecretAccessKey":"s","SessionToken":"t","Expiration":"{expiration}"}}"#
        )
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    fn key(loaded: &Result<Loaded, Problem>) -> String {
        let body = &loaded.as_ref().expect("credentials").body;
        let body = json::parse(body.as_bytes()).unwrap();
        body.get("AccessKeyId")
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    #[test]
    fn reloads_on_swap_and_in_place_writes_and_logs_once() {
        let volume = Volume::new("reload");
        let source = Source::new(volume.file());
        let now = at("2026-11-26T22:00:00Z");
        let mut log = Vec::new();
        let current =
            |log: &mut Vec<String>| source.current_at(now, &mut |line| log.push(line.to_string()));

        let missing = current(&mut log);
        assert!(matches!(&missing, Err(Problem::Missing(m)) if m.contains("does not exist")));
        assert!(current(&mut log).is_err());
        assert_eq!(log.len(), 1, "a missing file is logged once: {log:?}");

        volume.swap(1, &document("FIRST", "2026-11-26T23:00:00Z"));
        assert_eq!(key(&current(&mut log)), "FIRST");
        assert_eq!(
            log.last().unwrap(),
            "loaded credentials expiring at 2026-11-26T23:00:00Z"
        );
        let loads = log.len();
        assert_eq!(key(&current(&mut log)), "FIRST");
        assert_eq!(log.len(), loads, "an unchanged file is not re-read");

        volume.swap(2, &document("SECOND", "2026-11-26T23:30:00Z"));
        assert_eq!(key(&current(&mut log)), "SECOND");

        // In place (same inode): a different length is a different identity.
        let payload = volume.0.join("..0002").join("credentials.json");
        std::fs::write(&payload, document("THIRD-LONGER", "2026-11-26T23:30:00Z")).unwrap();
        assert_eq!(key(&current(&mut log)), "THIRD-LONGER");

        volume.swap(3, "{\"Version\":1,");
        let invalid = current(&mut log);
        assert!(matches!(&invalid, Err(Problem::Invalid(m)) if m.contains("not a JSON object")));
        let logged = log.len();
        assert!(current(&mut log).is_err());
        assert_eq!(log.len(), logged, "the same problem is logged once");
        assert!(
            log.iter()
                .all(|l| !l.contains("FIRST") && !l.contains("SECOND")),
            "{log:?}"
        );
    }

    #[test]
    fn expiry_is_checked_on_every_call() {
        let volume = Volume::new("expiry");
        volume.swap(1, &document("EXP", "2026-11-26T23:00:00Z"));
        let source = Source::new(volume.file());
        let quiet = &mut |_: &str| {};
        assert!(
            source
                .current_at(at("2026-11-26T22:59:59.9Z"), quiet)
                .is_ok()
        );
        let expired = source.current_at(at("2026-11-26T23:00:00Z"), quiet);
        match expired {
            Err(Problem::Expired(m)) => {
                assert!(m.contains("expired at 2026-11-26T23:00:00Z"), "{m}");
                assert!(m.contains(&volume.file().display().to_string()), "{m}");
            }
            other => panic!("not expired: {other:?}"),
        }
    }

    #[test]
    fn directories_and_huge_files_are_refused() {
        let volume = Volume::new("odd");
        std::fs::create_dir(volume.0.join("..0001")).unwrap();
        std::fs::create_dir(volume.0.join("..0001").join("credentials.json")).unwrap();
        symlink("..0001", volume.0.join("..data")).unwrap();
        let source = Source::new(volume.file());
        let quiet = &mut |_: &str| {};
        let now = at("2026-11-26T22:00:00Z");
        assert!(
            matches!(source.current_at(now, quiet), Err(Problem::Invalid(m)) if m.contains("not a regular file"))
        );
        volume.swap(2, &" ".repeat(MAX_FILE_LEN as usize + 1));
        assert!(
            matches!(source.current_at(now, quiet), Err(Problem::Invalid(m)) if m.contains("larger than"))
        );
    }
}
