//! Types that can only hold valid values: parsing a request yields these or a list of field errors.

pub mod assertion;
pub mod change;
pub mod contact;
pub mod field;
pub mod links;
pub mod mask;
pub mod origin;
pub mod patch;
pub mod plan;
mod sql_text;
pub mod step_error;
pub mod target;
pub mod upi;

pub use assertion::UserAssertion;
pub use change::{ChangeStatus, ChangeView, StepErrorView, StepStatus, StepView};
pub use contact::{CountryCode, Email, MobileNumber, PersonName};
pub use field::Field;
pub use links::{LinkMember, ProfileLinks, UserId};
pub use origin::{Actor, Origin};
pub use patch::{FieldError, ProfilePatch};
pub use plan::{PlannedStep, ProviderSpec, StepRequest, plan};
pub use step_error::{StepError, StepErrorCode};
pub use target::Target;
pub use upi::{DeviceFingerprint, TimestampWindow, UpiAction, UpiChange, UpiNumber, Vpa};
