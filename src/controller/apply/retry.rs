//! How a request of an action that the API server did not carry out is answered: tried
//! again within the action when the cause is transient (a flaky API server must not cost a
//! new STS call nor a backoff period), otherwise handed to the action. Pure, so the policy
//! is unit-tested apart from any server.
//!
//! kube's client already repeats 429, 503 and 504 answers in its transport (honouring a
//! `Retry-After` header); what reaches this policy has been through that.

use std::time::Duration;

/// Tries of one request, the first included.
pub const MAX_TRIES: u32 = 4;
/// The nominal pause after the first failed try; it doubles after each further one, and
/// each pause is drawn from [2/3, 4/3) of its nominal value (so 100–200 ms, 200–400 ms,
/// 400–800 ms: at most 1.4 s in all).
pub const FIRST_DELAY: Duration = Duration::from_millis(150);
/// No try starts later than this after the first one: it bounds slow answers and a
/// server's `retryAfterSeconds` too, so an action never holds its slot for long.
pub const BUDGET: Duration = Duration::from_secs(3);

/// What a failed request says about the object and about trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Worth trying again as it was: 5xx, 429, 408 or a server timeout, a dropped or
    /// refused connection, a transport timeout. `retry_after` is the server's
    /// `details.retryAfterSeconds`, when it gave one.
    Transient { retry_after: Option<Duration> },
    /// 404: the object (or its namespace) does not exist.
    NotFound,
    /// 409 `AlreadyExists`: a create found the name taken.
    AlreadyExists,
    /// 409 because the object is no longer the one the request was bound to by uid (a
    /// `metadata.uid` or delete precondition): it was deleted and re-created.
    UidMismatch,
    /// Any other 409: the object changed since it was read (its resourceVersion).
    Conflict,
    /// A refusal trying again would not change (400, 403, 422, an admission denial) or an
    /// error of the client itself.
    Final,
}

/// Classifies a kube error.
pub fn classify(e: &kube::Error) -> Refusal {
    match e {
        kube::Error::Api(status) => classify_status(status),
        // Connection refused, reset or dropped, a transport timeout, a broken body.
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            Refusal::Transient { retry_after: None }
        }
        _ => Refusal::Final,
    }
}

/// Classifies an API server's `Status` answer (by code, or by reason when it has none).
pub fn classify_status(s: &kube::core::Status) -> Refusal {
    let retry_after = s
        .details
        .as_ref()
        .map(|d| d.retry_after_seconds)
        .filter(|&secs| secs > 0)
        .map(|secs| Duration::from_secs(u64::from(secs)));
    let code = match (s.code, s.reason.as_str()) {
        (0, "NotFound") => 404,
        (0, "AlreadyExists" | "Conflict") => 409,
        (0, "TooManyRequests") => 429,
        (0, "Timeout" | "ServerTimeout" | "InternalError" | "ServiceUnavailable") => 500,
        (code, _) => code,
    };
    match code {
        404 => Refusal::NotFound,
        409 if s.reason == "AlreadyExists" => Refusal::AlreadyExists,
        409 if s
            .message
            .contains("Precondition failed: UID in precondition") =>
        {
            Refusal::UidMismatch
        }
        409 => Refusal::Conflict,
        408 | 429 | 500..=599 => Refusal::Transient { retry_after },
        _ => Refusal::Final,
    }
}

/// The pause before trying again after `tries` tries failed, the last with `refusal`,
/// `elapsed` after the first began; `None` when not to try again: the refusal is not
/// transient, the tries are used up, or the pause (at least the server's `retry_after`)
/// would end beyond [`BUDGET`]. `seed` is any random number; it only draws the jitter.
pub fn next_delay(refusal: Refusal, tries: u32, elapsed: Duration, seed: u64) -> Option<Duration> {
    let Refusal::Transient { retry_after } = refusal else {
        return None;
    };
    if tries >= MAX_TRIES {
        return None;
    }
    let delay = backoff(tries, seed).max(retry_after.unwrap_or_default());
    (elapsed + delay <= BUDGET).then_some(delay)
}

/// The jittered pause after the `tries`-th failed try (from 1): `FIRST_DELAY · 2^(tries−1)`
/// times a factor in [2/3, 4/3) drawn from `seed`.
pub fn backoff(tries: u32, seed: u64) -> Duration {
    let doublings = tries.clamp(1, 8) - 1;
    let nominal = FIRST_DELAY.as_millis() as u64 * (1 << doublings);
    let low = nominal * 2 / 3;
    let span = (nominal * 4 / 3 - low).max(1);
    Duration::from_millis(low + seed % span)
}

/// A random seed for [`backoff`] without a random-number dependency: std's hasher keys
/// are random per process and change with each `RandomState`; `key` and the clock spread
/// actions that fail together.
pub fn seed(key: &str, tries: u32) -> u64 {
    use std::hash::BuildHasher as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::collections::hash_map::RandomState::new().hash_one((key, tries, nanos))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::core::Status;
    use kube::core::response::StatusDetails;

    use super::{BUDGET, FIRST_DELAY, MAX_TRIES, Refusal};
    use crate::controller::apply::retry;

    fn status(code: u16, reason: &str, message: &str) -> Status {
        Status::failure(message, reason).with_code(code)
    }

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(status(code, reason, message).boxed())
    }

    fn with_retry_after(s: Status, secs: u32) -> Status {
        s.with_details(StatusDetails {
            name: "app".into(),
            group: String::new(),
            kind: "secrets".into(),
            uid: String::new(),
            causes: Vec::new(),
            retry_after_seconds: secs,
        })
    }

    const TRANSIENT: Refusal = Refusal::Transient { retry_after: None };

    #[test]
    fn server_errors_throttling_and_timeouts_are_transient() {
        for code in [500, 502, 503, 504, 599, 429, 408] {
            assert_eq!(retry::classify(&api(code, "", "")), TRANSIENT, "{code}");
        }
        let hinted = with_retry_after(status(429, "TooManyRequests", "slow down"), 2);
        assert_eq!(
            retry::classify_status(&hinted),
            Refusal::Transient {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        // A zero hint is no hint.
        let zero = with_retry_after(status(500, "InternalError", ""), 0);
        assert_eq!(retry::classify_status(&zero), TRANSIENT);
        // Without a code, the reason decides.
        for reason in [
            "Timeout",
            "ServerTimeout",
            "InternalError",
            "ServiceUnavailable",
            "TooManyRequests",
        ] {
            assert_eq!(retry::classify(&api(0, reason, "")), TRANSIENT, "{reason}");
        }
    }

    #[test]
    fn connection_and_transport_errors_are_transient() {
        let reset = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            retry::classify(&kube::Error::Service(Box::new(reset()))),
            TRANSIENT
        );
        assert_eq!(
            retry::classify(&kube::Error::ReadEvents(reset())),
            TRANSIENT
        );
    }

    #[test]
    fn refusals_that_another_try_would_not_change_are_final() {
        for code in [400, 401, 403, 405, 410, 413, 415, 422, 499, 600] {
            assert_eq!(
                retry::classify(&api(code, "", "")),
                Refusal::Final,
                "{code}"
            );
        }
        assert_eq!(
            retry::classify(&api(0, "Forbidden", "")),
            Refusal::Final,
            "an unknown code with a non-transient reason"
        );
        let undecodable = serde_json::from_str::<u8>("x").unwrap_err();
        assert_eq!(
            retry::classify(&kube::Error::SerdeError(undecodable)),
            Refusal::Final
        );
        assert_eq!(
            retry::classify(&kube::Error::LinesCodecMaxLineLengthExceeded),
            Refusal::Final
        );
    }

    #[test]
    fn not_found_and_the_three_conflicts_are_told_apart() {
        assert_eq!(
            retry::classify(&api(404, "NotFound", "")),
            Refusal::NotFound
        );
        assert_eq!(retry::classify(&api(0, "NotFound", "")), Refusal::NotFound);
        let exists = "secrets \"app\" already exists";
        assert_eq!(
            retry::classify(&api(409, "AlreadyExists", exists)),
            Refusal::AlreadyExists
        );
        assert_eq!(
            retry::classify(&api(0, "AlreadyExists", exists)),
            Refusal::AlreadyExists
        );
        let replaced = "Precondition failed: UID in precondition: 1111, UID in object meta: 2222";
        assert_eq!(
            retry::classify(&api(409, "Conflict", replaced)),
            Refusal::UidMismatch
        );
        let modified = "Operation cannot be fulfilled on secrets \"app\": the object has been modified; please apply your changes to the latest version and try again";
        assert_eq!(
            retry::classify(&api(409, "Conflict", modified)),
            Refusal::Conflict
        );
        assert_eq!(retry::classify(&api(0, "Conflict", "")), Refusal::Conflict);
    }

    #[test]
    fn pauses_double_within_their_jitter_band() {
        let first = FIRST_DELAY.as_millis() as u64;
        for (tries, nominal) in [(1, first), (2, 2 * first), (3, 4 * first), (4, 8 * first)] {
            let (low, high) = (nominal * 2 / 3, nominal * 4 / 3);
            let pauses: Vec<u64> = (0..2000u64)
                .map(|seed| retry::backoff(tries, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .map(|d| d.as_millis() as u64)
                .collect();
            assert!(pauses.iter().all(|&p| (low..high).contains(&p)), "{tries}");
            // The band is used, not one point of it.
            assert_eq!(pauses.iter().min(), Some(&low), "{tries}");
            assert_eq!(pauses.iter().max(), Some(&(high - 1)), "{tries}");
        }
        assert_eq!(retry::backoff(1, 0), Duration::from_millis(100));
        assert_eq!(retry::backoff(1, 99), Duration::from_millis(199));
        assert_eq!(retry::backoff(1, 100), Duration::from_millis(100));
        assert_eq!(
            retry::backoff(0, 0),
            retry::backoff(1, 0),
            "tries count from 1"
        );
        assert_eq!(
            retry::backoff(40, 0),
            retry::backoff(8, 0),
            "the doubling stops"
        );
    }

    #[test]
    fn only_transient_failures_are_tried_again_within_tries_and_budget() {
        let zero = Duration::ZERO;
        for tries in 1..MAX_TRIES {
            let delay = retry::next_delay(TRANSIENT, tries, zero, 7);
            assert_eq!(delay, Some(retry::backoff(tries, 7)), "{tries}");
        }
        assert_eq!(retry::next_delay(TRANSIENT, MAX_TRIES, zero, 7), None);
        assert_eq!(MAX_TRIES, 4);
        for refusal in [
            Refusal::Final,
            Refusal::NotFound,
            Refusal::AlreadyExists,
            Refusal::Conflict,
            Refusal::UidMismatch,
        ] {
            assert_eq!(retry::next_delay(refusal, 1, zero, 7), None, "{refusal:?}");
        }
        // The budget bounds the end of the pause, not its start.
        let pause = retry::backoff(1, 7);
        assert_eq!(
            retry::next_delay(TRANSIENT, 1, BUDGET - pause, 7),
            Some(pause)
        );
        let late = BUDGET - pause + Duration::from_millis(1);
        assert_eq!(retry::next_delay(TRANSIENT, 1, late, 7), None);
        // The worst case of every pause fits the budget with room for the requests.
        let worst: Duration = (1..MAX_TRIES)
            .map(|t| retry::backoff(t, u64::MAX - 1))
            .sum();
        assert!(worst < BUDGET / 2, "{worst:?}");
    }

    #[test]
    fn a_servers_retry_after_is_honoured_within_the_budget() {
        let hinted = |secs| Refusal::Transient {
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            retry::next_delay(hinted(1), 1, Duration::ZERO, 0),
            Some(Duration::from_secs(1))
        );
        // A shorter hint than the pause does not shorten it.
        let hint = Refusal::Transient {
            retry_after: Some(Duration::from_millis(1)),
        };
        assert_eq!(
            retry::next_delay(hint, 1, Duration::ZERO, 0),
            Some(retry::backoff(1, 0))
        );
        // One beyond the budget ends the tries: the action fails and backs off instead.
        assert_eq!(retry::next_delay(hinted(30), 1, Duration::ZERO, 0), None);
    }

    #[test]
    fn seeds_vary() {
        let seeds: std::collections::BTreeSet<u64> = (0..50)
            .map(|_| retry::seed("writing Secret a/b", 1))
            .collect();
        assert!(seeds.len() > 40, "{}", seeds.len());
    }
}
