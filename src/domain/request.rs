//! The request state machine.
use serde::{Deserialize, Serialize};

/// submitted -> in_review -> approved | rejected; submitted | in_review -> cancelled;
/// submitted -> approved | rejected (automatic policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Submitted,
    InReview,
    Approved,
    Rejected,
    Cancelled,
}

impl RequestStatus {
    pub const ALL: [RequestStatus; 5] = [
        Self::Submitted,
        Self::InReview,
        Self::Approved,
        Self::Rejected,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::InReview => "in_review",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Approved | Self::Rejected | Self::Cancelled)
    }

    pub fn can_become(self, next: Self) -> bool {
        use RequestStatus::*;
        matches!(
            (self, next),
            (Submitted, InReview)
                | (Submitted, Approved)
                | (Submitted, Rejected)
                | (Submitted, Cancelled)
                | (InReview, Approved)
                | (InReview, Rejected)
                | (InReview, Cancelled)
        )
    }
}

/// A reviewer's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Self::Approve),
            "reject" => Some(Self::Reject),
            _ => None,
        }
    }
    pub fn status(self) -> RequestStatus {
        match self {
            Self::Approve => RequestStatus::Approved,
            Self::Reject => RequestStatus::Rejected,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// Request numbers shown to sellers: the org's sequence, e.g. `R000501`.
pub fn request_number(seq: i64) -> String {
    format!("R{seq:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use RequestStatus::*;
        for s in RequestStatus::ALL {
            assert_eq!(RequestStatus::parse(s.as_str()), Some(s));
            if s.is_terminal() {
                assert!(
                    RequestStatus::ALL.iter().all(|n| !s.can_become(*n)),
                    "{s:?}"
                );
            }
        }
        assert!(InReview.can_become(Approved));
        assert!(!Approved.can_become(Rejected));
        assert!(!InReview.can_become(Submitted));
        assert_eq!(request_number(501), "R000501");
    }
}
