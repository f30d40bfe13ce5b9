//! The Secret the controller writes: its byte-exact data keys (compatible with the original
//! controller and with every AWS SDK's file readers), its labels and owner, and the decoder
//! that reads it back without trusting it.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource as _;
use serde::{Deserialize, Serialize};

use crate::domain::arn::RoleArn;
use crate::domain::crd::AWSIAMRole;
pub use crate::domain::model::{
    HERITAGE_LABEL, HERITAGE_VALUE, TYPE_LABEL, TYPE_VALUE, is_managed,
};
use crate::domain::model::{ObservedRole, ObservedSecret};

pub use crate::domain::model::ISSUED_AT_ANNOTATION;

pub const KEY_CREDENTIALS: &str = "credentials";
pub const KEY_PROCESS: &str = "credentials.process";
pub const KEY_JSON: &str = "credentials.json";
pub const KEY_ROLE_ARN: &str = "role-arn";
pub const KEY_EXPIRE: &str = "expire";
pub const KEY_GENERATION: &str = "awsiamrole-generation";
/// Every key a readable Secret has.
pub const DATA_KEYS: [&str; 6] = [
    KEY_CREDENTIALS,
    KEY_PROCESS,
    KEY_JSON,
    KEY_ROLE_ARN,
    KEY_EXPIRE,
    KEY_GENERATION,
];
/// Keys whose values are credential material: never rendered.
pub const SECRET_KEYS: [&str; 2] = [KEY_CREDENTIALS, KEY_JSON];

/// The fixed `credentials.process` content: a profile whose credential_process reads the JSON
/// document mounted beside it.
pub const PROCESS_FILE: &str =
    "[default]\ncredential_process = cat /meta/aws-iam/credentials.json\n";

/// RFC 3339, UTC, whole seconds: `2026-11-26T23:00:00Z`.
pub fn format_time(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// Temporary credentials from STS. `Debug` redacts every secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: Timestamp,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &format_time(self.expiration))
            .finish()
    }
}

/// The credential_process document; field order is part of the format.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessJson {
    version: i64,
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// [`ProcessJson`] as read back: borrowed, so checking a Secret copies no credential.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessJsonRef<'a> {
    version: i64,
    #[serde(borrow)]
    access_key_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    secret_access_key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    session_token: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    expiration: std::borrow::Cow<'a, str>,
}

/// The six data keys for credentials issued for `role_arn` at AWSIAMRole `generation`.
pub fn encode(creds: &Credentials, role_arn: &str, generation: i64) -> BTreeMap<String, Vec<u8>> {
    let expiration = format_time(creds.expiration);
    let ini = format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\naws_expiration = {}\n",
        creds.access_key_id, creds.secret_access_key, creds.session_token, expiration
    );
    let json = ProcessJson {
        version: 1,
        access_key_id: creds.access_key_id.clone(),
        secret_access_key: creds.secret_access_key.clone(),
        session_token: creds.session_token.clone(),
        expiration: expiration.clone(),
    };
    // Serialising a struct of strings cannot fail.
    let json = serde_json::to_vec(&json).unwrap_or_default();
    BTreeMap::from([
        (KEY_CREDENTIALS.to_string(), ini.into_bytes()),
        (KEY_PROCESS.to_string(), PROCESS_FILE.as_bytes().to_vec()),
        (KEY_JSON.to_string(), json),
        (KEY_ROLE_ARN.to_string(), role_arn.as_bytes().to_vec()),
        (KEY_EXPIRE.to_string(), expiration.into_bytes()),
        (
            KEY_GENERATION.to_string(),
            generation.to_string().into_bytes(),
        ),
    ])
}

/// Fields the `[default]` profile of `credentials` must set.
const INI_FIELDS: [&str; 3] = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

pub use crate::domain::model::SecretContent;

/// Reads a managed Secret back. `Err` names the first unusable key, never its value. A lean
/// Secret ([`lean`]) answers with the verdict it was read to when it arrived.
pub fn decode(s: &ObservedSecret) -> Result<SecretContent, String> {
    if let Some(checked) = &s.checked {
        return checked.content.clone();
    }
    read(s)
}

/// The form of a managed Secret kept between passes: its data is read once, and the verdict
/// (with the role ARN it names, the issued-at annotation, whether it is managed, and a digest of
/// all of its data) stands in for the data, labels and annotations, which are dropped. No
/// credential value is kept; the planner reads the verdict ([`decode`], [`role_arn_of`],
/// [`ObservedSecret::is_managed`], [`ObservedSecret::issued_at`]). An unmanaged Secret keeps
/// its labels.
pub fn lean(mut s: ObservedSecret) -> ObservedSecret {
    use sha2::{Digest as _, Sha256};
    if s.checked.is_some() {
        return s;
    }
    let content = read(&s);
    let role_arn = role_arn_of(&s).filter(|arn| {
        content
            .as_ref()
            .map_or(true, |content| content.role_arn != *arn)
    });
    let owners = std::mem::take(&mut s.owner_references)
        .into_iter()
        .filter(is_role_owner)
        .map(|o| (o.name.into_boxed_str(), o.uid.into_boxed_str()))
        .collect();
    let mut hasher = Sha256::new();
    for (k, v) in &s.data {
        hasher.update((k.len() as u64).to_be_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.len() as u64).to_be_bytes());
        hasher.update(v);
    }
    for k in &s.undecodable_keys {
        hasher.update(b"\0undecodable\0");
        hasher.update(k.as_bytes());
    }
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&hasher.finalize()[..16]);
    let managed = is_managed(&s.labels);
    let issued_at = s.issued_at();
    s.data = BTreeMap::new();
    s.undecodable_keys = Default::default();
    s.annotations = BTreeMap::new();
    if managed {
        s.labels = BTreeMap::new();
    }
    s.checked = Some(crate::domain::model::Checked {
        content,
        role_arn,
        owners,
        managed,
        issued_at,
        digest,
    });
    s
}

fn read(s: &ObservedSecret) -> Result<SecretContent, String> {
    check_keys(s)?;
    let text = |key: &str| -> Result<&str, String> {
        std::str::from_utf8(&s.data[key])
            .map(str::trim)
            .map_err(|_| format!("data key {key:?} is not UTF-8"))
    };
    let expire_text = text(KEY_EXPIRE)?;
    let expire: Timestamp = expire_text
        .parse()
        .map_err(|_| format!("data key {KEY_EXPIRE:?} is not an RFC 3339 time"))?;
    let role_arn = text(KEY_ROLE_ARN)?;
    crate::domain::arn::validate_role_arn(role_arn)
        .map_err(|_| format!("data key {KEY_ROLE_ARN:?} is not an IAM role ARN"))?;
    let generation: i64 = text(KEY_GENERATION)?
        .parse()
        .map_err(|_| format!("data key {KEY_GENERATION:?} is not an integer"))?;
    if text(KEY_PROCESS)? != PROCESS_FILE.trim() {
        return Err(format!(
            "data key {KEY_PROCESS:?} does not hold the expected credential_process profile"
        ));
    }
    check_process_json(text(KEY_JSON)?, expire_text, expire)?;
    check_profile(text(KEY_CREDENTIALS)?)?;
    Ok(SecretContent {
        role_arn: role_arn.to_string(),
        expire,
        generation,
    })
}

/// Every data key is there, decoded and non-empty.
fn check_keys(s: &ObservedSecret) -> Result<(), String> {
    if let Some(k) = s.undecodable_keys.iter().next() {
        if k.is_empty() {
            return Err("data is not a map of base64 strings".into());
        }
        // The key is untrusted (any name in an offline file): quoted as an excerpt, so a
        // huge key cannot flood a status or a log.
        return Err(format!(
            "data key {} does not decode (not a base64 string)",
            crate::domain::text::excerpt(k)
        ));
    }
    for key in DATA_KEYS {
        match s.data.get(key) {
            None => return Err(format!("data key {key:?} is missing")),
            Some(v) if v.is_empty() => return Err(format!("data key {key:?} is empty")),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The credential_process document is complete and expires when `expire` says.
fn check_process_json(json: &str, expire_text: &str, expire: Timestamp) -> Result<(), String> {
    let json: ProcessJsonRef<'_> = serde_json::from_str(json)
        .map_err(|_| format!("data key {KEY_JSON:?} is not a credential_process document"))?;
    if json.version != 1
        || json.access_key_id.is_empty()
        || json.secret_access_key.is_empty()
        || json.session_token.is_empty()
    {
        return Err(format!(
            "data key {KEY_JSON:?} lacks Version 1 or a credential field"
        ));
    }
    if json.expiration != expire_text && json.expiration.parse::<Timestamp>().ok() != Some(expire) {
        return Err(format!(
            "data key {KEY_JSON:?} has an Expiration other than {KEY_EXPIRE:?}"
        ));
    }
    Ok(())
}

/// The `[default]` profile of `credentials` sets every credential field.
fn check_profile(ini: &str) -> Result<(), String> {
    let mut section = "";
    let mut found = [false; 3];
    for line in ini.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim();
        } else if section == "default"
            && let Some((k, v)) = line.split_once('=')
            && !v.trim().is_empty()
            && let Some(i) = INI_FIELDS.iter().position(|f| *f == k.trim())
        {
            found[i] = true;
        }
    }
    match found.iter().position(|f| !f) {
        Some(i) => Err(format!(
            "data key {KEY_CREDENTIALS:?} lacks {} in its [default] profile",
            INI_FIELDS[i]
        )),
        None => Ok(()),
    }
}

/// The `role-arn` key alone, when it holds a role ARN (for reporting orphans that are
/// otherwise unreadable).
pub fn role_arn_of(s: &ObservedSecret) -> Option<String> {
    if let Some(checked) = &s.checked {
        return checked.role_arn.clone().or_else(|| {
            checked
                .content
                .as_ref()
                .ok()
                .map(|content| content.role_arn.clone())
        });
    }
    let text = std::str::from_utf8(s.data.get(KEY_ROLE_ARN)?).ok()?;
    text.trim().parse::<RoleArn>().ok().map(|a| a.to_string())
}

/// The owner reference a managed Secret carries for its AWSIAMRole.
pub fn owner_reference(role: &ObservedRole) -> OwnerReference {
    OwnerReference {
        api_version: AWSIAMRole::api_version(&()).into(),
        kind: AWSIAMRole::kind(&()).into(),
        name: role.name.clone(),
        uid: role.uid.clone(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// Whether `s` is owned by exactly this AWSIAMRole. Without a known UID (hand-written offline
/// input) the name alone decides.
pub fn owned_by(s: &ObservedSecret, role: &ObservedRole) -> bool {
    let owns =
        |name: &str, uid: &str| name == role.name && (role.uid.is_empty() || uid == role.uid);
    match &s.checked {
        Some(checked) => checked.owners.iter().any(|(name, uid)| owns(name, uid)),
        None => s
            .owner_references
            .iter()
            .any(|o| is_role_owner(o) && owns(&o.name, &o.uid)),
    }
}

/// Whether an owner reference names an AWSIAMRole (of any version of its group).
fn is_role_owner(o: &OwnerReference) -> bool {
    o.kind == AWSIAMRole::kind(&())
        && o.api_version.split('/').next() == Some(&AWSIAMRole::group(&()))
}

/// The complete Secret for `role` holding `creds` for `role_arn`; `issued_at` is when STS
/// issued them. Labels are the role's, with the two ownership labels winning.
pub fn build(
    role: &ObservedRole,
    role_arn: &str,
    creds: &Credentials,
    issued_at: Timestamp,
) -> Secret {
    let mut labels = role.labels.to_map();
    labels.insert(HERITAGE_LABEL.into(), HERITAGE_VALUE.into());
    labels.insert(TYPE_LABEL.into(), TYPE_VALUE.into());
    Secret {
        metadata: ObjectMeta {
            name: Some(role.name.clone()),
            namespace: Some(role.namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ISSUED_AT_ANNOTATION.to_string(),
                format_time(issued_at),
            )])),
            owner_references: Some(vec![owner_reference(role)]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            encode(creds, role_arn, role.generation)
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A redacted, line-oriented rendering of a Secret for plan diffs. Credential keys show
/// `<redacted>`; the other keys show their value only when it decodes as expected.
pub fn view(s: &ObservedSecret) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "Secret {}/{}\n",
        crate::domain::text::shorten(&s.namespace),
        crate::domain::text::shorten(&s.name)
    );
    let map = |out: &mut String, title: &str, m: &BTreeMap<String, String>| {
        if !m.is_empty() {
            let _ = writeln!(out, "  {title}:");
            for (k, v) in m {
                let _ = writeln!(
                    out,
                    "    {}: {}",
                    crate::domain::text::shorten(k),
                    crate::domain::text::shorten(v)
                );
            }
        }
    };
    map(&mut out, "labels", &s.labels);
    map(&mut out, "annotations", &s.annotations);
    let shorten = crate::domain::text::shorten;
    let mut owners: Vec<String> = s
        .owner_references
        .iter()
        .map(|o| {
            let (api_version, kind) = (shorten(&o.api_version), shorten(&o.kind));
            let (name, uid) = (shorten(&o.name), shorten(&o.uid));
            format!("{api_version} {kind} {name} (uid {uid})")
        })
        .collect();
    // The lean form keeps its AWSIAMRole owners only, without their version.
    let lean_owners = s.checked.iter().flat_map(|c| c.owners.iter());
    owners.extend(lean_owners.map(|(name, uid)| {
        let (group, kind) = (AWSIAMRole::group(&()), AWSIAMRole::kind(&()));
        format!("{group} {kind} {} (uid {})", shorten(name), shorten(uid))
    }));
    if !owners.is_empty() {
        out.push_str("  ownerReferences:\n");
        for owner in owners {
            let _ = writeln!(out, "    {owner}");
        }
    }
    out.push_str("  data:\n");
    for (k, v) in &s.data {
        let _ = writeln!(
            out,
            "    {}: {}",
            crate::domain::text::shorten(k),
            view_value(k, v)
        );
    }
    for k in &s.undecodable_keys {
        let _ = writeln!(out, "    {}: <not base64>", crate::domain::text::shorten(k));
    }
    out
}

fn view_value(key: &str, value: &[u8]) -> String {
    let garbled = || format!("<unreadable, {} bytes>", value.len());
    let text = std::str::from_utf8(value).map(str::trim);
    match key {
        KEY_CREDENTIALS | KEY_JSON => "<redacted>".into(),
        KEY_PROCESS if text == Ok(PROCESS_FILE.trim()) => {
            "credential_process = cat /meta/aws-iam/credentials.json".into()
        }
        KEY_ROLE_ARN => match text.ok().and_then(|t| t.parse::<RoleArn>().ok()) {
            Some(arn) => arn.to_string(),
            None => garbled(),
        },
        KEY_EXPIRE => match text.ok().and_then(|t| t.parse::<Timestamp>().ok()) {
            Some(t) => format_time(t),
            None => garbled(),
        },
        KEY_GENERATION => match text.ok().and_then(|t| t.parse::<i64>().ok()) {
            Some(g) => g.to_string(),
            None => garbled(),
        },
        _ => format!("<{} bytes>", value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "SeCrEt/Key+1".into(),
            session_token: "ToKeN==".into(),
            expiration: "2026-11-26T23:00:00.123Z".parse().unwrap(),
        }
    }

    fn observed(data: BTreeMap<String, Vec<u8>>) -> ObservedSecret {
        ObservedSecret {
            namespace: "ns".into(),
            name: "app".into(),
            data,
            ..ObservedSecret::default()
        }
    }

    #[test]
    fn encodes_byte_exact_formats() {
        let d = encode(&creds(), "arn:aws:iam::123456789012:role/app", 7);
        assert_eq!(
            std::str::from_utf8(&d[KEY_CREDENTIALS]).unwrap(),
            "[default]\naws_access_key_id = ASIAEXAMPLE\naws_secret_access_key = SeCrEt/Key+1\naws_session_token = ToKeN==\naws_expiration = 2026-11-26T23:00:00Z\n"
        );
        assert_eq!(
            std::str::from_utf8(&d[KEY_PROCESS]).unwrap(),
            "[default]\ncredential_process = cat /meta/aws-iam/credentials.json\n"
        );
        assert_eq!(
            std::str::from_utf8(&d[KEY_JSON]).unwrap(),
            r#"{"Version":1,"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"SeCrEt/Key+1","SessionToken":"ToKeN==","Expiration":"2026-11-26T23:00:00Z"}"#
        );
        assert_eq!(d[KEY_EXPIRE], b"2026-11-26T23:00:00Z");
        assert_eq!(d[KEY_GENERATION], b"7");
        assert_eq!(d[KEY_ROLE_ARN], b"arn:aws:iam::123456789012:role/app");
    }

    #[test]
    fn decodes_what_it_encodes_and_rejects_garbage() {
        let d = encode(&creds(), "arn:aws:iam::123456789012:role/app", 7);
        let c = decode(&observed(d.clone())).unwrap();
        assert_eq!(c.generation, 7);
        assert_eq!(format_time(c.expire), "2026-11-26T23:00:00Z");
        let mut other_profile = d.clone();
        let ini = String::from_utf8(d[KEY_CREDENTIALS].clone()).unwrap();
        other_profile.insert(
            KEY_CREDENTIALS.into(),
            ini.replace("[default]", "[prod]").into_bytes(),
        );
        assert!(
            decode(&observed(other_profile))
                .unwrap_err()
                .contains("[default]")
        );
        for key in DATA_KEYS {
            let mut missing = d.clone();
            missing.remove(key);
            assert!(decode(&observed(missing)).unwrap_err().contains(key));
            let mut garbage = d.clone();
            garbage.insert(key.into(), vec![0xff, 0x00, 0x9c]);
            let err = decode(&observed(garbage)).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    /// Found by the `secrets` fuzz target: an undecodable key was quoted whole.
    #[test]
    fn an_undecodable_key_is_quoted_as_an_excerpt() {
        let mut s = observed(encode(&creds(), "arn:aws:iam::123456789012:role/app", 7));
        s.undecodable_keys
            .insert(format!(".do{}", "n".repeat(10_000)));
        let err = decode(&s).unwrap_err();
        assert!(err.starts_with("data key \".donn"), "{err}");
        assert!(
            err.ends_with("does not decode (not a base64 string)"),
            "{err}"
        );
        assert!(err.len() < 200, "{} bytes: {err}", err.len());
    }

    #[test]
    fn debug_and_view_redact() {
        let c = creds();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("ASIAEXAMPLE") && !dbg.contains("SeCrEt") && !dbg.contains("ToKeN"));
        let v = view(&observed(encode(
            &c,
            "arn:aws:iam::123456789012:role/app",
            1,
        )));
        assert!(!v.contains("ASIAEXAMPLE") && !v.contains("SeCrEt") && !v.contains("ToKeN"));
        assert!(v.contains("role-arn: arn:aws:iam::123456789012:role/app"));
    }

    #[test]
    fn the_lean_form_keeps_the_verdict_and_no_credential() {
        let d = encode(&creds(), "arn:aws:iam::123456789012:role/app", 7);
        let mut full = observed(d.clone());
        full.annotations = BTreeMap::from([
            (
                ISSUED_AT_ANNOTATION.to_string(),
                "2026-11-26T22:00:00Z".to_string(),
            ),
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                "{}".to_string(),
            ),
        ]);
        full.labels = BTreeMap::from([
            (HERITAGE_LABEL.to_string(), HERITAGE_VALUE.to_string()),
            (TYPE_LABEL.to_string(), TYPE_VALUE.to_string()),
            ("app".to_string(), "x".to_string()),
        ]);
        let slim = lean(full.clone());
        assert_eq!(decode(&slim), decode(&full));
        assert_eq!(role_arn_of(&slim), role_arn_of(&full));
        assert_eq!(
            role_arn_of(&slim).as_deref(),
            Some("arn:aws:iam::123456789012:role/app")
        );
        assert!(slim.data.is_empty(), "no data value is kept");
        assert!(slim.annotations.is_empty() && slim.labels.is_empty());
        assert_eq!(
            slim.issued_at(),
            Some("2026-11-26T22:00:00Z".parse().unwrap())
        );
        assert_eq!(slim.issued_at(), full.issued_at());
        let mut odd = full.clone();
        odd.annotations
            .insert(ISSUED_AT_ANNOTATION.into(), "yesterday".into());
        assert_eq!((odd.issued_at(), lean(odd).issued_at()), (None, None));
        assert!(slim.is_managed() && full.is_managed());
        // An unmanaged Secret stays unmanaged, its labels kept.
        let mut foreign = full.clone();
        foreign.labels.remove(TYPE_LABEL);
        let foreign = lean(foreign);
        assert!(!foreign.is_managed());
        assert_eq!(foreign.labels.len(), 2);
        let dbg = format!("{slim:?}");
        assert!(!dbg.contains("ASIAEXAMPLE") && !dbg.contains("SeCrEt") && !dbg.contains("ToKeN"));
        // Debug still shows what was kept: the verdict, the issued-at time, a hex digest.
        for shown in [
            "ObservedSecret",
            "Checked",
            "generation: 7",
            "2026-11-26T22:00:00Z",
        ] {
            assert!(dbg.contains(shown), "{shown} missing from {dbg}");
        }
        let digest = slim.checked.as_ref().unwrap().digest;
        assert!(
            dbg.contains(&format!("{:02x}{:02x}", digest[0], digest[1])),
            "{dbg}"
        );
        assert_eq!(lean(slim.clone()), slim, "lean twice is lean once");

        // A credential edited by hand: same verdict, another digest, so the state changes.
        let mut edited = d.clone();
        let json = String::from_utf8(d[KEY_JSON].clone()).unwrap();
        edited.insert(
            KEY_JSON.into(),
            json.replace("ToKeN==", "other").into_bytes(),
        );
        let ini = String::from_utf8(d[KEY_CREDENTIALS].clone()).unwrap();
        edited.insert(
            KEY_CREDENTIALS.into(),
            ini.replace("ToKeN==", "other").into_bytes(),
        );
        let tampered = lean(observed(edited));
        assert!(decode(&tampered).is_ok());
        assert_ne!(tampered, lean(observed(d.clone())));
        // A broken one keeps its error.
        let mut broken = d.clone();
        broken.insert(KEY_JSON.into(), b"{}".to_vec());
        let err = decode(&lean(observed(broken))).unwrap_err();
        assert!(err.contains(KEY_JSON), "{err}");
        let mut undecodable = observed(d);
        undecodable.undecodable_keys.insert("x".into());
        let slim = lean(undecodable.clone());
        assert!(slim.undecodable_keys.is_empty());
        assert_eq!(decode(&slim), decode(&undecodable));
    }

    #[test]
    fn the_lean_form_answers_ownership_and_the_role_arn_as_the_full_one() {
        let d = encode(&creds(), "arn:aws:iam::123456789012:role/app", 7);
        let mut full = observed(d.clone());
        let owner = |api_version: &str, kind: &str, name: &str, uid: &str| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            ..OwnerReference::default()
        };
        full.owner_references = vec![
            owner("apps/v1", "Deployment", "app", "u-deploy"),
            owner("zalando.org/v1", "AWSIAMRole", "app", "u-1"),
            owner("zalando.org/v2", "AWSIAMRole", "other", "u-2"),
            owner("example.com/v1", "AWSIAMRole", "app", "u-3"),
        ];
        let slim = lean(full.clone());
        assert!(slim.owner_references.is_empty(), "the full references go");
        assert_eq!(
            slim.checked.as_ref().unwrap().owners.len(),
            2,
            "only AWSIAMRole owners of the group stay"
        );
        let role = |name: &str, uid: &str| ObservedRole {
            namespace: "ns".into(),
            name: name.into(),
            uid: uid.into(),
            ..ObservedRole::default()
        };
        for (candidate, owned) in [
            (role("app", "u-1"), true),
            (role("app", ""), true),
            (role("other", "u-2"), true),
            (role("app", "u-2"), false),
            (role("app", "u-3"), false),
            (role("app", "u-deploy"), false),
            (role("third", "u-1"), false),
        ] {
            assert_eq!(owned_by(&full, &candidate), owned, "{candidate:?}");
            assert_eq!(owned_by(&slim, &candidate), owned, "lean {candidate:?}");
        }
        let view = view(&slim);
        assert!(
            view.contains("ownerReferences:\n    zalando.org AWSIAMRole app (uid u-1)\n    zalando.org AWSIAMRole other (uid u-2)\n"),
            "{view}"
        );

        // A readable Secret keeps its role ARN once, in the verdict; an unreadable one keeps
        // what its role-arn key names.
        assert_eq!(slim.checked.as_ref().unwrap().role_arn, None);
        assert_eq!(role_arn_of(&slim), role_arn_of(&full));
        let mut unreadable = d;
        unreadable.remove(KEY_EXPIRE);
        let unreadable = lean(observed(unreadable));
        assert!(decode(&unreadable).is_err());
        assert_eq!(
            role_arn_of(&unreadable).as_deref(),
            Some("arn:aws:iam::123456789012:role/app")
        );
        let mut nothing = observed(BTreeMap::new());
        nothing.owner_references = vec![owner("zalando.org/v1", "AWSIAMRole", "app", "u-1")];
        let nothing = lean(nothing);
        assert_eq!(role_arn_of(&nothing), None);
        assert!(owned_by(&nothing, &role("app", "u-1")));
    }

    #[test]
    fn managed_needs_both_labels() {
        let both = BTreeMap::from([
            (HERITAGE_LABEL.to_string(), HERITAGE_VALUE.to_string()),
            (TYPE_LABEL.to_string(), TYPE_VALUE.to_string()),
        ]);
        assert!(is_managed(&both));
        let mut one = both.clone();
        one.remove(TYPE_LABEL);
        assert!(!is_managed(&one));
    }
}
