//! The plan's vocabulary tables: each action kind and each reason is declared once, as one row
//! of a macro below, and everything that lists them (the enums, `ALL`, the names every rendering
//! and metric uses, the text plan's symbols and summary phrases, the per-kind counts of
//! [`Summary`], the conversions of the narrower reason types) is generated from those rows. A
//! new kind or reason is one new row; nothing can list five kinds where there are six.

use std::fmt;

use serde::Serialize;
use serde::ser::SerializeMap as _;

/// What the table says about one action kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: ActionKind,
    /// Name in every rendering, metric label and the JSON summary (`update-status`, …).
    pub name: &'static str,
    /// Terraform-like marker in the text plan.
    pub symbol: char,
    /// How the summary line counts it (`3 to create`).
    pub phrase: &'static str,
    /// Whether applying it calls STS.
    pub needs_credentials: bool,
}

macro_rules! action_kinds {
    ($(
        $(#[$doc:meta])*
        $kind:ident { name: $name:literal, symbol: $symbol:literal, phrase: $phrase:literal, sts: $sts:literal }
    )+) => {
        /// What an action does, as every rendering, metric and report names it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ActionKind {
            $( $(#[$doc])* $kind, )+
        }

        /// One row per kind, in declaration order (a kind's discriminant is its row).
        const KINDS: &[KindInfo] = &[
            $( KindInfo {
                kind: ActionKind::$kind,
                name: $name,
                symbol: $symbol,
                phrase: $phrase,
                needs_credentials: $sts,
            }, )+
        ];

        impl ActionKind {
            /// Every kind, in the order of renderings and summaries.
            pub const ALL: [ActionKind; KINDS.len()] = [$( ActionKind::$kind ),+];
        }
    };
}

action_kinds! {
    /// No managed Secret yet: assume the role and create it.
    Create { name: "create", symbol: '+', phrase: "to create", sts: true }
    /// Assume the role again and replace the managed Secret in place.
    Refresh { name: "refresh", symbol: '~', phrase: "to refresh", sts: true }
    /// Credentials fine, status stale.
    UpdateStatus { name: "update-status", symbol: '~', phrase: "to update status", sts: false }
    /// Delete a managed Secret.
    Delete { name: "delete", symbol: '-', phrase: "to delete", sts: false }
    /// Nothing to do.
    Skip { name: "skip", symbol: '=', phrase: "up to date", sts: false }
    /// Not served; status and Event say why.
    Blocked { name: "blocked", symbol: '!', phrase: "blocked", sts: false }
}

impl ActionKind {
    /// This kind's row of the table.
    pub fn info(self) -> &'static KindInfo {
        &KINDS[self as usize]
    }

    /// Name in every rendering (`update-status`, …).
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// Terraform-like marker in the text plan.
    pub fn symbol(self) -> char {
        self.info().symbol
    }

    /// Whether applying this action calls STS.
    pub fn needs_credentials(self) -> bool {
        self.info().needs_credentials
    }

    /// The kind named `name` (as [`ActionKind::as_str`] gives it).
    pub fn from_name(name: &str) -> Option<ActionKind> {
        KINDS.iter().find(|k| k.name == name).map(|k| k.kind)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts per action kind (the `summary` of the JSON rendering, keyed by kind name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    counts: [usize; KINDS.len()],
}

impl Summary {
    pub fn count(&self, kind: ActionKind) -> usize {
        self.counts[kind as usize]
    }

    pub fn add(&mut self, kind: ActionKind) {
        self.counts[kind as usize] += 1;
    }

    /// `(kind, count)` for every kind, in [`ActionKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ActionKind, usize)> + '_ {
        ActionKind::ALL.into_iter().map(|k| (k, self.count(k)))
    }

    /// `Plan: 1 to create, …, 4 up to date.`: every kind's phrase in table order, except that
    /// the up-to-date count closes the line.
    pub fn line(&self) -> String {
        let parts: Vec<String> = self
            .iter()
            .filter(|(k, _)| *k != ActionKind::Skip)
            .chain(std::iter::once((
                ActionKind::Skip,
                self.count(ActionKind::Skip),
            )))
            .map(|(k, n)| format!("{n} {}", k.info().phrase))
            .collect();
        format!("Plan: {}.", parts.join(", "))
    }
}

impl Serialize for Summary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(KINDS.len()))?;
        for (kind, n) in self.iter() {
            map.serialize_entry(kind.as_str(), &n)?;
        }
        map.end()
    }
}

/// Picks the [`Reason`] a narrower reason's variant converts into: its own name, unless the row
/// names another.
macro_rules! reason_of {
    ($variant:ident) => {
        Reason::$variant
    };
    ($variant:ident, $target:ident) => {
        Reason::$target
    };
}

macro_rules! reasons {
    (
        $(#[$meta:meta])*
        pub enum Reason { $( $(#[$doc:meta])* $reason:ident, )+ }
        $(
            $(#[$sub_meta:meta])*
            pub enum $sub:ident { $( $(#[$sub_doc:meta])* $variant:ident $(=> $target:ident)?, )+ }
        )*
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $( $(#[$doc])* $reason, )+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &[Reason] = &[$( Reason::$reason ),+];

            /// Name in renderings, Events and conditions: the variant's own name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Reason::$reason => stringify!($reason), )+
                }
            }
        }

        $(
            $(#[$sub_meta])*
            #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
            pub enum $sub {
                $( $(#[$sub_doc])* $variant, )+
            }

            impl $sub {
                /// Every variant, in declaration order.
                pub const ALL: &[$sub] = &[$( $sub::$variant ),+];
            }

            impl From<$sub> for Reason {
                fn from(r: $sub) -> Reason {
                    match r {
                        $( $sub::$variant => reason_of!($variant $(, $target)?), )+
                    }
                }
            }
        )*
    };
}

reasons! {
    /// Why an action was chosen, as renderings, Events and conditions name it.
    pub enum Reason {
        Missing,
        Unreadable,
        OwnerChanged,
        RoleChanged,
        SpecChanged,
        Expiring,
        /// Re-issued because the operator asked (`bootstrap`), whatever the Secret in place
        /// holds. The planner never chooses it.
        Requested,
        StatusStale,
        OwnerGone,
        NotPermitted,
        UpToDate,
        InvalidSpec,
        /// A bare role name in a plan made without a base role ARN: the planning run lacks
        /// `--base-role-arn`; the spec is fine.
        NeedsBaseRoleArn,
        SecretConflict,
        /// Issuing credentials failed lately; no STS call before the status's `retryAfter`.
        BackingOff,
    }

    /// Why credentials are issued again over an existing managed Secret.
    pub enum RefreshReason {
        Unreadable,
        OwnerChanged,
        RoleChanged,
        SpecChanged,
        Expiring,
        /// See [`Reason::Requested`].
        Requested,
    }

    /// Why an AWSIAMRole is not served.
    pub enum BlockReason {
        InvalidSpec,
        /// A bare role name and no base role ARN to resolve it with (a plan made offline, or a
        /// dry run that could not call `GetCallerIdentity`): the plan lacks `--base-role-arn`,
        /// so it is not reported as `InvalidSpec`. A real pass always has a base.
        NeedsBaseArn => NeedsBaseRoleArn,
        NotPermitted,
        SecretConflict,
        /// The last attempts to issue credentials failed (see
        /// [`retry_delay`](super::refresh::retry_delay)); the next one waits for the status's
        /// `retryAfter`. Whatever Secret is in place stays.
        BackingOff,
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_its_own_row_with_its_names() {
        assert_eq!(ActionKind::ALL.len(), 6);
        for (i, kind) in ActionKind::ALL.into_iter().enumerate() {
            assert_eq!(KINDS[i].kind, kind, "row {i}");
            assert_eq!(kind.info().kind, kind);
            assert_eq!(ActionKind::from_name(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let rendered: Vec<(&str, char, bool)> = ActionKind::ALL
            .iter()
            .map(|k| (k.as_str(), k.symbol(), k.needs_credentials()))
            .collect();
        assert_eq!(
            rendered,
            [
                ("create", '+', true),
                ("refresh", '~', true),
                ("update-status", '~', false),
                ("delete", '-', false),
                ("skip", '=', false),
                ("blocked", '!', false),
            ]
        );
        assert_eq!(ActionKind::from_name("update_status"), None);
        assert_eq!(ActionKind::from_name(""), None);
    }

    #[test]
    fn summaries_count_each_kind_apart_and_render_every_phrase() {
        let mut s = Summary::default();
        // Kind i is added i + 1 times, so a count read from the wrong row shows.
        for (i, kind) in ActionKind::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                s.add(kind);
            }
        }
        for (i, kind) in ActionKind::ALL.into_iter().enumerate() {
            assert_eq!(s.count(kind), i + 1, "{kind}");
        }
        assert_eq!(
            s.line(),
            "Plan: 1 to create, 2 to refresh, 3 to update status, 4 to delete, 6 blocked, 5 up to date."
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"create":1,"refresh":2,"update-status":3,"delete":4,"skip":5,"blocked":6}"#
        );
        assert_eq!(Summary::default().count(ActionKind::Blocked), 0);
    }

    #[test]
    fn reasons_are_named_after_their_variant_and_narrow_ones_convert() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "Missing",
                "Unreadable",
                "OwnerChanged",
                "RoleChanged",
                "SpecChanged",
                "Expiring",
                "Requested",
                "StatusStale",
                "OwnerGone",
                "NotPermitted",
                "UpToDate",
                "InvalidSpec",
                "NeedsBaseRoleArn",
                "SecretConflict",
                "BackingOff",
            ]
        );
        assert_eq!(Reason::BackingOff.to_string(), "BackingOff");
        let refresh: Vec<Reason> = RefreshReason::ALL.iter().map(|&r| r.into()).collect();
        assert_eq!(
            refresh,
            [
                Reason::Unreadable,
                Reason::OwnerChanged,
                Reason::RoleChanged,
                Reason::SpecChanged,
                Reason::Expiring,
                Reason::Requested,
            ]
        );
        let block: Vec<Reason> = BlockReason::ALL.iter().map(|&r| r.into()).collect();
        assert_eq!(
            block,
            [
                Reason::InvalidSpec,
                Reason::NeedsBaseRoleArn,
                Reason::NotPermitted,
                Reason::SecretConflict,
                Reason::BackingOff,
            ]
        );
    }
}
