//! Decisions made by the system rather than a reviewer: policy auto-approve,
//! refusals by the review job's checks, and SLA auto-reject.
use approvald_workers::JobError;

use crate::{app::App, domain::request::Decision, jobs::review::RequestInfo};

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
