//! Types that can only hold valid values: parsing a request yields these or a list of field errors.

pub mod change;
pub mod contact;
pub mod links;
pub mod mask;
pub mod patch;
pub mod plan;
pub mod upi;

pub use change::{ChangeStatus, ChangeView, StepErrorView, StepStatus, StepView};
pub use contact::{CountryCode, Email, MobileNumber, PersonName};
pub use links::{ProfileLinks, UserId};
pub use patch::{FieldError, ProfilePatch};
pub use plan::{PlannedStep, StepRequest, Target, plan};
pub use upi::{DeviceFingerprint, TimestampWindow, UpiAction, UpiChange, UpiNumber, Vpa};
