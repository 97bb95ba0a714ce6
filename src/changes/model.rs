//! A change as callers see it. Its types are the domain's (`domain::change`), where the store
//! reads and writes them too; what only the service adds lives here.

use crate::providers::StepError;

pub use crate::domain::change::{ChangeStatus, ChangeView, StepErrorView, StepStatus, StepView};

impl From<&StepError> for StepErrorView {
    fn from(e: &StepError) -> Self {
        Self {
            code: e.code,
            retryable: e.retryable,
            upstream_status: e.upstream_status,
            upstream_code: e.upstream_code.clone(),
            message: e.message.clone(),
        }
    }
}
