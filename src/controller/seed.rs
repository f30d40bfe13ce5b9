//! Seed credentials: the controller running on the Secret of its own AWSIAMRole.
//!
//! Outside AWS there is no instance profile or web identity to start from. The controller's
//! own AWSIAMRole Secret is mounted into its pod and `AWS_SHARED_CREDENTIALS_FILE` names its
//! `credentials` file; every pass refreshes that Secret like any other, and kubelet swaps the
//! mounted files (a new timestamped directory behind the `..data` symlink). The AWS SDK's
//! profile provider reads such a file once and caches what it read, so the controller would
//! keep signing with the first session until it expired. [`SeedCredentials`] instead checks
//! the file on every use (one `stat`, re-read only when the target changed) and refuses to
//! hand out credentials past their `aws_expiration`, so a request fails with an error naming
//! the file instead of being signed with a dead session.
//!
//! Precedence, decided once at start-up by [`detect`]: static keys in the environment
//! (`AWS_ACCESS_KEY_ID`) win, as they do in the SDK's own chain; otherwise a file named by
//! `AWS_SHARED_CREDENTIALS_FILE` whose profile carries `aws_expiration` is a seed; anything
//! else (no variable, no file, a file with long-lived keys) is left to the SDK's default chain.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use jiff::Timestamp;

use crate::domain::secret::format_time;

/// The name this provider gives the credentials it hands out (shown by the SDK in debug logs).
const PROVIDER_NAME: &str = "SeedCredentialsFile";

/// Why seed credentials cannot be used. Messages name the file and never its contents.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read the controller's credentials file {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error(
        "the controller's credentials file {path} has no usable profile [{profile}]: {message}"
    )]
    Malformed {
        path: String,
        profile: String,
        message: String,
    },
    #[error(
        "the controller's credentials in {path} expired at {expiration}; refusing to sign with \
         them (its own AWSIAMRole Secret was not refreshed in time: re-run `bootstrap`)"
    )]
    Expired { path: String, expiration: String },
}

/// What identifies the file's current content without reading it: kubelet replaces the
/// whole directory, so the resolved path changes; a rewrite in place changes size or mtime.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    resolved: PathBuf,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let resolved = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&resolved)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        resolved,
        inode,
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// One parsed profile. `Debug` shows the expiry only.
#[derive(Clone)]
struct Loaded {
    credentials: Credentials,
    expiration: Timestamp,
}

#[derive(Default)]
struct State {
    stamp: Option<Stamp>,
    loaded: Option<Result<Loaded, SeedError>>,
    reloads: u64,
}

/// A credentials provider over a kubelet-mounted shared credentials file.
pub struct SeedCredentials {
    path: PathBuf,
    profile: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for SeedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedCredentials")
            .field("path", &self.path)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// Decides from the environment whether the controller runs on seed credentials (see the
/// module documentation for the precedence). `Err` when the file is a seed but unusable.
pub fn detect() -> Result<Option<SeedCredentials>, SeedError> {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty()) {
        return Ok(None);
    }
    let Some(path) = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    let profile = std::env::var("AWS_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".into());
    let path = PathBuf::from(path);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    if !profile_fields(&text, &profile).any(|(k, _)| k == "aws_expiration") {
        return Ok(None);
    }
    Ok(Some(SeedCredentials::new(path, profile)))
}

impl SeedCredentials {
    pub fn new(path: impl Into<PathBuf>, profile: impl Into<String>) -> Self {
        SeedCredentials {
            path: path.into(),
            profile: profile.into(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials to sign with now: re-read when the file changed since the last use,
    /// refused when expired.
    pub fn credentials(&self) -> Result<Credentials, SeedError> {
        let loaded = self.current()?;
        if Timestamp::now() >= loaded.expiration {
            return Err(SeedError::Expired {
                path: self.path.display().to_string(),
                expiration: format_time(loaded.expiration),
            });
        }
        Ok(loaded.credentials)
    }

    /// The `aws_expiration` of the file's current content (for the metric and `/healthz`).
    pub fn expiration(&self) -> Result<Timestamp, SeedError> {
        self.current().map(|l| l.expiration)
    }

    /// How many times the file was (re-)read: a test hook and a debug aid.
    pub fn reloads(&self) -> u64 {
        self.state.lock().map(|s| s.reloads).unwrap_or(0)
    }

    fn current(&self) -> Result<Loaded, SeedError> {
        let path_text = || self.path.display().to_string();
        let now_stamp = stamp(&self.path).map_err(|e| SeedError::Unreadable {
            path: path_text(),
            message: e.kind().to_string(),
        })?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.stamp.as_ref() != Some(&now_stamp) || state.loaded.is_none() {
            let loaded = std::fs::read_to_string(&now_stamp.resolved)
                .map_err(|e| SeedError::Unreadable {
                    path: path_text(),
                    message: e.kind().to_string(),
                })
                .and_then(|text| {
                    parse(&text, &self.profile).map_err(|message| SeedError::Malformed {
                        path: path_text(),
                        profile: self.profile.clone(),
                        message,
                    })
                });
            if let Ok(l) = &loaded {
                tracing::info!(
                    file = %self.path.display(),
                    expiration = %format_time(l.expiration),
                    "read the controller's own credentials"
                );
            }
            state.stamp = Some(now_stamp);
            state.loaded = Some(loaded);
            state.reloads += 1;
        }
        state.loaded.clone().unwrap_or_else(|| {
            Err(SeedError::Unreadable {
                path: path_text(),
                message: "not read yet".into(),
            })
        })
    }
}

impl ProvideCredentials for SeedCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::ready(
            self.credentials().map_err(CredentialsError::provider_error),
        )
    }
}

/// A shareable handle, so the STS client, the metrics and `/healthz` see the same file state.
#[derive(Clone, Debug)]
pub struct SharedSeed(pub std::sync::Arc<SeedCredentials>);

impl ProvideCredentials for SharedSeed {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.0.provide_credentials()
    }
}

/// `key = value` pairs of one `[profile]` section (comments and blank lines skipped).
fn profile_fields<'t>(text: &'t str, profile: &'t str) -> impl Iterator<Item = (&'t str, &'t str)> {
    let mut section = "";
    text.lines().filter_map(move |line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            return None;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim();
            return None;
        }
        if section != profile {
            return None;
        }
        line.split_once('=').map(|(k, v)| (k.trim(), v.trim()))
    })
}

/// The profile's keys and expiry; errors name the missing or bad field, never a value.
fn parse(text: &str, profile: &str) -> Result<Loaded, String> {
    let (mut id, mut secret, mut token, mut expiration) = (None, None, None, None);
    for (k, v) in profile_fields(text, profile) {
        let slot = match k {
            "aws_access_key_id" => &mut id,
            "aws_secret_access_key" => &mut secret,
            "aws_session_token" => &mut token,
            "aws_expiration" => &mut expiration,
            _ => continue,
        };
        *slot = Some(v).filter(|v| !v.is_empty());
    }
    let id = id.ok_or("aws_access_key_id is missing or empty")?;
    let secret = secret.ok_or("aws_secret_access_key is missing or empty")?;
    let expiration: Timestamp = expiration
        .ok_or("aws_expiration is missing or empty")?
        .parse()
        .map_err(|_| "aws_expiration is not an RFC 3339 time".to_string())?;
    let expires_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(expiration.as_second()).unwrap_or(0));
    Ok(Loaded {
        credentials: Credentials::new(
            id,
            secret,
            token.map(str::to_string),
            Some(expires_after),
            PROVIDER_NAME,
        ),
        expiration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id: &str, expiration: &str) -> String {
        format!(
            "[default]\naws_access_key_id = {id}\naws_secret_access_key = s3cr3t-{id}\naws_session_token = t0ken-{id}\naws_expiration = {expiration}\n"
        )
    }

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("seed-unit-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rereads_when_the_data_symlink_is_swapped() {
        let dir = scratch("swap");
        let later = format_time(Timestamp::now() + jiff::SignedDuration::from_hours(1));
        std::fs::create_dir(dir.join("..v1")).unwrap();
        std::fs::write(dir.join("..v1/credentials"), profile("AKIDONE", &later)).unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/credentials", dir.join("credentials")).unwrap();
        let seed = SeedCredentials::new(dir.join("credentials"), "default");
        assert_eq!(seed.credentials().unwrap().access_key_id(), "AKIDONE");
        assert_eq!(seed.credentials().unwrap().access_key_id(), "AKIDONE");
        assert_eq!(seed.reloads(), 1, "unchanged file is not re-read");

        std::fs::create_dir(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v2/credentials"), profile("AKIDTWO", &later)).unwrap();
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(seed.credentials().unwrap().access_key_id(), "AKIDTWO");
        assert_eq!(seed.reloads(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_expired_credentials_naming_file_and_expiry() {
        let dir = scratch("expired");
        let file = dir.join("credentials");
        std::fs::write(&file, profile("AKIDOLD", "2020-01-01T00:00:00Z")).unwrap();
        let seed = SeedCredentials::new(&file, "default");
        let e = seed.credentials().unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, SeedError::Expired { .. }), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains("2020-01-01T00:00:00Z"), "{text}");
        assert!(
            !text.contains("AKIDOLD") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert_eq!(
            seed.expiration().unwrap().to_string(),
            "2020-01-01T00:00:00Z"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn malformed_profiles_name_the_field_not_the_value() {
        let text = "[default]\naws_access_key_id = AKIDX\naws_secret_access_key = s3cr3t\naws_expiration = tomorrow\n";
        let e = parse(text, "default").err().unwrap();
        assert_eq!(e, "aws_expiration is not an RFC 3339 time");
        let e = parse("[other]\naws_access_key_id = A\n", "default")
            .err()
            .unwrap();
        assert!(e.contains("aws_access_key_id"), "{e}");
        let ok = parse(&profile("AKIDP", "2030-01-01T00:00:00Z"), "default").unwrap();
        assert_eq!(ok.credentials.session_token(), Some("t0ken-AKIDP"));
    }
}
