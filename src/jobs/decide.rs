//! Decisions made by the system rather than a reviewer: policy auto-approve,
//! refusals by the review job's checks, and SLA auto-reject.
use approvald_workers::JobError;

use crate::{app::App, domain::request::Decision, jobs::review::RequestInfo};

/// Why the system refuses a request whose requester (or grantee) is not active.
pub const INACTIVE_MEMBER_REASON: &str =
    "the requesting member is not an active member of this account";

/// Decide `req` as the system, if it is still open (`submitted` or
/// `in_review`). Returns whether this call decided it (false: somebody else
/// already had, which is fine: the job is idempotent).
pub async fn system_decision(
    app: &App,
    req: &RequestInfo,
    decision: Decision,
    reason: &str,
) -> Result<bool, JobError> {
    use crate::store::decisions::{DecideError, Decider, decide};
    match decide(app, &req.id, Decider::System, decision, reason).await {
        Ok(_) => Ok(true),
        // The requester (or the member the grant is for) left between the
        // review job's checks and the approval: refuse the request instead.
        Err(DecideError::MemberInactive { .. }) if decision == Decision::Approve => {
            Box::pin(system_decision(
                app,
                req,
                Decision::Reject,
                INACTIVE_MEMBER_REASON,
            ))
            .await
        }
        Err(DecideError::AlreadyDecided { .. }) => Ok(false),
        Err(DecideError::NotFound) => Err(JobError::permanent(anyhow::anyhow!(
            "request {} vanished",
            req.id
        ))),
        Err(e) => Err(JobError::retryable(
            anyhow::Error::new(e).context("deciding request"),
        )),
    }
}
