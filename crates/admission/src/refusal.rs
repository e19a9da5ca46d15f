//! Why a request was refused: one word per rule, which each transport
//! turns into its own answer (an HTTP problem, a SIP status and Warning).

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal<W> {
    /// A field of the request is not acceptable.
    Invalid {
        field: &'static str,
        message: String,
    },
    /// An agent token sends only as its own identity.
    NotOwnIdentity,
    /// The identity is frozen (the kill-switch).
    Frozen,
    /// The identity's number is not verified and the carrier requires it.
    NumberNotVerified,
    /// The transport's body screen (the WAF) refused, with its own answer.
    Screened(W),
    /// The identity's `rate_per_second`; seconds to wait.
    RatePerSecond {
        retry_after: u64,
    },
    CountryNotAllowed,
    MonthlyBudget,
    ConcurrentCalls,
    /// The balance does not cover `cost`.
    InsufficientCredits {
        cost: i64,
    },
    /// The Idempotency-Key came with another request.
    KeyReused,
    /// A concurrent request with the key was first and is not done.
    KeyInProgress,
    /// The shared rate state is unreachable; admission stays closed.
    Unavailable,
}

impl<W> Refusal<W> {
    /// The reason word, as the HTTP problem's `reason` and the SIP
    /// `Warning` carry it.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Invalid { .. } => "validation_failed",
            Refusal::NotOwnIdentity => "forbidden",
            Refusal::Frozen => "frozen",
            Refusal::NumberNotVerified => "number_not_verified",
            Refusal::Screened(_) => "blocked",
            Refusal::RatePerSecond { .. } => "rate_per_second",
            Refusal::CountryNotAllowed => "country_not_allowed",
            Refusal::MonthlyBudget => "monthly_budget",
            Refusal::ConcurrentCalls => "concurrent_calls",
            Refusal::InsufficientCredits { .. } => "insufficient_credits",
            Refusal::KeyReused => "idempotency_key_reused",
            Refusal::KeyInProgress => "conflict",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// The refusal of a guard in an atomic write, by the word the store
    /// gives it; `None` for a word admission never uses.
    pub(crate) fn of_guard(reason: &str, cost: i64) -> Option<Self> {
        match reason {
            "insufficient_credits" => Some(Refusal::InsufficientCredits { cost }),
            "monthly_budget" => Some(Refusal::MonthlyBudget),
            _ => None,
        }
    }
}
