//! Where a request came from and who acted: built once at the HTTP edge, carried by reference
//! into the change's record and every audit event it causes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The origin of a request (or of the gateway's own act), as the `changes` row and every audit
/// event record it: `caller`, `request_id`, `trace_id`, `caller_addr` and `actor` columns.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub caller: String,
    /// The caller-chosen (or edge-made) `x-request-id`.
    pub request_id: String,
    pub trace_id: Option<String>,
    pub caller_addr: Option<String>,
    /// `None` only for a change recorded by a gateway that did not record one, or before the
    /// caller is authenticated: its events are then written without an actor (and hashed with
    /// the v1 encoding).
    pub actor: Option<Actor>,
}

impl Origin {
    /// What the edge knows before authentication: the request's ids and address. No caller yet.
    pub fn at_edge(
        request_id: String,
        trace_id: Option<String>,
        caller_addr: Option<String>,
    ) -> Self {
        Self {
            request_id,
            trace_id,
            caller_addr,
            ..Self::default()
        }
    }

    /// This request's origin once its caller is known, with who acted.
    pub fn acted_by(&self, caller: &str, actor: Actor) -> Self {
        Self {
            caller: caller.to_string(),
            actor: Some(actor),
            ..self.clone()
        }
    }

    /// The actor as the `actor` jsonb column holds it.
    pub fn actor_json(&self) -> Option<Value> {
        self.actor.as_ref().map(Actor::to_json)
    }
}

/// Who acted, beyond the caller's name: how it authenticated, for which signed-in user, and the
/// gateway's own id for the request (the caller chooses `request_id`). Every event carries it in
/// `audit_events.actor`, which the event's hash covers (encoding v2, docs/auditing.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Actor {
    /// `token`, `jwt:{issuer}`, or `system` for the gateway's own acts.
    pub auth: String,
    pub subject: Option<String>,
    pub assertion_subject: Option<String>,
    pub assertion_jti: Option<String>,
    pub gateway_request_id: String,
}

impl Actor {
    pub fn system() -> Self {
        Self {
            auth: "system".into(),
            gateway_request_id: Uuid::new_v4().to_string(),
            ..Default::default()
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// An actor as an event recorded it, to write into the events of a resumed change.
    pub fn from_json(v: &Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn acting_keeps_the_edge_ids_and_names_the_caller() {
        let edge = Origin::at_edge(
            "req-12345678".into(),
            Some("t".into()),
            Some("10.0.0.1".into()),
        );
        assert!(edge.actor.is_none());
        let o = edge.acted_by("app", Actor::system());
        assert_eq!(o.caller, "app");
        assert_eq!(o.request_id, "req-12345678");
        assert_eq!(o.trace_id.as_deref(), Some("t"));
        assert_eq!(o.caller_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(o.actor_json().unwrap()["auth"], "system");
    }

    #[test]
    fn an_actor_reads_back_from_its_json_and_a_malformed_one_is_an_error() {
        let a = Actor {
            auth: "jwt:https://idp".into(),
            subject: Some("sa".into()),
            assertion_subject: Some("alice".into()),
            assertion_jti: Some("j-1".into()),
            gateway_request_id: "gw-1".into(),
        };
        let back = Actor::from_json(&a.to_json()).unwrap();
        assert_eq!(back.to_json(), a.to_json());
        // What an edit of the stored JSON could leave: the caller logs it, its events carry none.
        assert!(Actor::from_json(&json!({"auth": 5, "gateway_request_id": "gw"})).is_err());
        assert!(Actor::from_json(&json!({"subject": "sa"})).is_err());
        assert!(Actor::from_json(&json!("token")).is_err());
    }
}
